"""Safety-data mixing (Safety-Tuned LLaMAs, Bianchi et al., ICLR 2024): add refusal examples to the training data.

``mix`` appends ``n_s`` refusal examples (harmful train prompts -> written refusals, see
:mod:`spftune.baselines.safety_data`) to the N training examples so that they make the share ``fraction`` of the
final mix, ``n_s / (N + n_s)``. The exact solution is ``n_s = fraction * N / (1 - fraction)``; when that is not an
integer, ``n_s`` is whichever of its floor and ceiling gives the share closest to ``fraction`` (the smaller on a
tie), so the share is exact whenever it can be and otherwise off by less than ``1 / (N + n_s)``. The task examples
are all kept (unlike ``harmful_fraction``, which replaces task examples), so a mixed run takes a few more steps per
epoch. The loop shuffles every epoch, so the refusals are simply appended.

``spf+mix`` is the same mixing followed by the SPF filter (:class:`~spftune.baselines.chain.MethodChain`).
"""

from __future__ import annotations

import math
from typing import Any

from spftune.baselines.chain import MethodChain
from spftune.baselines.options import Option, integer, open_interval, parse_options
from spftune.baselines.safety_data import SAFETY_SOURCE, refusal_examples
from spftune.core.config import SPFConfig
from spftune.train.methods import SPF, register_method

MIX_OPTIONS = {
    "fraction": Option(0.03, open_interval(0.0, 1.0), "the share of refusal examples in the final mix, e.g. "
                       "--method-options fraction=0.03"),
    "seed": Option(0, integer(0), "the seed of the refusal examples drawn, e.g. --method-options seed=0"),
}


def safety_count(n_task: int, fraction: float) -> int:
    """How many refusal examples to add to ``n_task`` examples so they make the share closest to ``fraction``."""
    if n_task < 0:
        raise ValueError(f"n_task must be >= 0, got {n_task}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction!r}")
    exact = fraction * n_task / (1.0 - fraction)
    low = math.floor(exact)
    candidates = [low, low + 1] if exact != low else [low]

    def error(n: int) -> float:
        return abs(n / (n_task + n) - fraction) if n_task + n else fraction

    return min(candidates, key=lambda n: (error(n), n))


@register_method("mix")
class Mix:
    """Append refusal examples so they make ``fraction`` of the training mix (options ``fraction``, ``seed``)."""

    name = "mix"

    def __init__(self, spf_config: SPFConfig | None = None, **options: Any) -> None:
        opts = parse_options(self.name, options, MIX_OPTIONS)
        self.fraction: float = opts["fraction"]
        self.seed: int = opts["seed"]
        self.added = 0

    def prepare_data(self, examples: list[dict[str, str]]) -> list[dict[str, str]]:
        self.added = safety_count(len(examples), self.fraction)
        return list(examples) + refusal_examples(self.added, seed=self.seed)

    def finish(self, model: Any) -> dict[str, Any]:
        return {"mix_safety_examples": self.added, "mix_fraction": self.fraction}


@register_method("spf+mix")
def spf_mix(spf_config: SPFConfig | None = None, **options: Any) -> MethodChain:
    """Refusal mixing (options ``fraction``, ``seed``) plus the SPF filter (``--spf-*`` options)."""
    opts = parse_options("spf+mix", options, MIX_OPTIONS)
    return MethodChain("spf+mix", Mix(**opts), SPF(spf_config=spf_config))


__all__ = ["MIX_OPTIONS", "SAFETY_SOURCE", "Mix", "safety_count", "spf_mix"]
