"""Baseline training methods, registered by name on import (``import spftune.baselines``).

=====================  ==============================================================================================
``spf-conflict-only``  SPF removing only the subspace coefficients that oppose the safety gradient (preset)
``spf-per-tensor``     SPF with a per-tensor conflict gate (preset)
``spf-update``         SPF applied to the optimizer's final update Δθ instead of the raw gradient
``mix``                safety-data mixing: refusal examples make ``fraction`` of the training mix (Safety-Tuned LLaMAs)
``spf+mix``            the mixing plus the SPF filter
``safegrad``           rank-1 gradient surgery against the refusal-loss gradient when they conflict
``safelora``           post-hoc Safe LoRA projection of LoRA adapters onto the alignment subspace (needs ``--lora``)
=====================  ==============================================================================================

Each is a method object with the loop's hooks (:mod:`spftune.train.methods`); none touches the training loop.
Options come as ``--method-options KEY=VALUE``; ``--spf-*`` flags configure the SPF-based ones.
"""

from spftune.baselines import spf_presets as _spf_presets  # noqa: F401  (registers the SPF presets)
from spftune.baselines.chain import MethodChain
from spftune.baselines.mixing import Mix, safety_count
from spftune.baselines.safegrad import SafeGrad, alignment_surgery_
from spftune.baselines.safelora import SafeLoRA, alignment_projection
from spftune.baselines.safety_data import refusal_batch, refusal_examples
from spftune.baselines.update_projection import SPFUpdate

BASELINES = ("spf-conflict-only", "spf-per-tensor", "spf-update", "mix", "spf+mix", "safegrad", "safelora")

__all__ = [
    "BASELINES",
    "MethodChain",
    "Mix",
    "SPFUpdate",
    "SafeGrad",
    "SafeLoRA",
    "alignment_projection",
    "alignment_surgery_",
    "refusal_batch",
    "refusal_examples",
    "safety_count",
]
