"""Where a tensor sits in the model: its layer type (``q_proj``, ``down_proj``, ``embed_tokens``, ...) and depth.

Names are the ones of ``model.named_parameters()``. The depth is the first integer path component
(``model.layers.7.mlp.up_proj.weight`` -> 7); tensors outside the repeated blocks (embeddings, the final norm) have
no depth and are grouped by their type instead. Summaries average per-tensor numbers over these groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
_WRAPPER_PARTS = ("weight", "bias", "default", "base_layer")


def tensor_type(name: str) -> str:
    """Layer type of a parameter name: the module that owns it (``q_proj``), ``.bias`` appended for a bias, and
    the adapter part for PEFT LoRA tensors (``q_proj.lora_A``)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in _ADAPTER_PARTS and i > 0:
            return f"{parts[i - 1]}.{part}"
    owner = next((p for p in reversed(parts) if p not in _WRAPPER_PARTS and not p.isdigit()), parts[-1])
    return owner + (".bias" if parts[-1] == "bias" else "")


def tensor_depth(name: str) -> int | None:
    """Index of the repeated block a parameter belongs to, or None (embeddings, final norm, lm_head)."""
    return next((int(p) for p in name.split(".") if p.isdigit()), None)


def layer_key(name: str) -> str:
    """Row label of the per-layer views: the depth as text, or the type for tensors outside the blocks."""
    depth = tensor_depth(name)
    return str(depth) if depth is not None else tensor_type(name)


def ordered_layer_keys(names: Iterable[str]) -> list[str]:
    """Layer keys in model order: tensors before the first block, blocks by depth, tensors after the last one."""
    names = list(names)
    keys: list[str] = []
    for name in names:
        key = layer_key(name)
        if key not in keys:
            keys.append(key)
    depths = sorted(int(k) for k in keys if k.isdigit())
    first = next((i for i, n in enumerate(names) if tensor_depth(n) is not None), len(names))
    before = [k for k in keys if not k.isdigit() and any(layer_key(n) == k for n in names[:first])]
    after = [k for k in keys if not k.isdigit() and k not in before]
    return before + [str(d) for d in depths] + after


def group_mean(values: dict[str, list[float]], key: Callable[[str], str]) -> dict[str, list[float]]:
    """Element-wise mean of equally long per-tensor lists over the tensors that share ``key(name)``; NaN skipped."""
    groups: dict[str, list[list[float]]] = {}
    for name, curve in values.items():
        groups.setdefault(key(name), []).append(curve)
    return {k: mean_curve(curves) for k, curves in groups.items()}


def mean_curve(curves: list[list[float]]) -> list[float]:
    if not curves:
        return []
    out = []
    for column in zip(*curves):
        finite = [v for v in column if not math.isnan(v)]
        out.append(sum(finite) / len(finite) if finite else math.nan)
    return out


def quantile_curve(curves: list[list[float]], q: float) -> list[float]:
    """Element-wise q-quantile (linear interpolation) of equally long lists; NaN skipped."""
    out = []
    for column in zip(*curves):
        finite = sorted(v for v in column if not math.isnan(v))
        if not finite:
            out.append(math.nan)
            continue
        pos = q * (len(finite) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(finite) - 1)
        out.append(finite[lo] + (finite[hi] - finite[lo]) * (pos - lo))
    return out
