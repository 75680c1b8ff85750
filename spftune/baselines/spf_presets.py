"""SPF variants as named presets over the core filter: the same :class:`~spftune.train.methods.SPF` method with one
field of :class:`~spftune.core.SPFConfig` fixed.

- ``spf-conflict-only``: ``removal="conflict_only"``, remove only the coefficients of ``U^T G_u`` whose sign opposes
  the safety gradient's own (``U^T G_s``), so the step can only move towards lower safety loss within the subspace.
- ``spf-per-tensor``: ``gate="per_tensor"``, project tensor b only when its own ``<G_u^b, G_s^b> < 0``.

The preset's field overrides what ``--spf-removal`` / ``--spf-gate`` say; every other ``--spf-*`` option applies.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from spftune.baselines.options import SPF_FLAGS_HINT, parse_options
from spftune.core.config import SPFConfig
from spftune.train.methods import SPF, register_method


def spf_preset(name: str, spf_config: SPFConfig | None, options: dict[str, Any], **fields: Any) -> SPF:
    parse_options(name, options, {}, hint=SPF_FLAGS_HINT)
    method = SPF(spf_config=replace(spf_config if spf_config is not None else SPFConfig(), **fields))
    method.name = name
    return method


@register_method("spf-conflict-only")
def spf_conflict_only(spf_config: SPFConfig | None = None, **options: Any) -> SPF:
    """SPF removing only the conflicting coefficients of the safety subspace."""
    return spf_preset("spf-conflict-only", spf_config, options, removal="conflict_only")


@register_method("spf-per-tensor")
def spf_per_tensor(spf_config: SPFConfig | None = None, **options: Any) -> SPF:
    """SPF with a per-tensor conflict gate instead of the paper's global one."""
    return spf_preset("spf-per-tensor", spf_config, options, gate="per_tensor")
