"""PNG plots of an analysis: the only module of :mod:`spftune.analysis` that imports matplotlib (Agg backend).

- ``cer.png``: CER(k) of safety vs utility gradients (mean over weight matrices, 10-90% band) and CER(10) by depth;
- ``conflict.png``: cosine between utility and safety gradients per layer and utility step, and per layer and type;
- ``overlap.png``: single-vs-batch subspace overlap against k, by layer type, with the chance level k/m;
- ``category_transfer.png``: overlap of one example's basis (rows) with another category's batch basis (columns).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from spftune.analysis.grouping import layer_key, ordered_layer_keys, tensor_type
from spftune.analysis.result import AnalysisResult, CurveSummary
from spftune.models.storage import write_bytes_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def _nan_to_none(values: list[float]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _band(ax: Any, curve: CurveSummary, label: str, color: str, style: str = "-") -> None:
    ax.plot(curve.k, curve.mean, style, color=color, label=label, lw=2)
    ax.fill_between(curve.k, curve.q10, curve.q90, color=color, alpha=0.15)


def plot_cer(result: AnalysisResult, path: Path) -> Path:
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    _band(ax, result.cer_safety, f"safety batch (n={result.cer_safety.info.get('examples')})", "#c0392b")
    _band(ax, result.cer_safety_single, "single safety example", "#e67e22", "--")
    _band(ax, result.cer_utility, f"utility batch (n={result.cer_utility.info.get('examples')})", "#2980b9")
    ax.axhline(0.85, color="gray", lw=0.8, ls=":", label="paper: CER(10) about 0.85 (safety)")
    ax.set(xlabel="k", ylabel="CER(k)", ylim=(0, 1.02), title="Cumulative explained ratio (mean, 10-90% band)")
    ax.legend(fontsize=8, loc="lower right")
    k = min(10, len(result.cer_safety.k))
    keys = [key for key in ordered_layer_keys(result.cer_safety.per_tensor) if key in result.cer_safety.by_layer]
    xs = range(len(keys))
    for curve, label, color in (
        (result.cer_safety, "safety", "#c0392b"),
        (result.cer_utility, "utility", "#2980b9"),
    ):
        ax2.plot(xs, [curve.by_layer.get(key, [math.nan] * k)[k - 1] for key in keys], "o-", ms=3, color=color, label=label)
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(keys, rotation=90, fontsize=6)
    ax2.set(xlabel="layer", ylabel=f"CER({k})", ylim=(0, 1.02), title=f"CER({k}) by layer (mean over its matrices)")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def _heat(ax: Any, matrix: list[list[float]], rows: list[str], cols: list[str], title: str, fig: Any) -> None:
    finite = [abs(v) for row in matrix for v in row if not math.isnan(v)]
    vmax = max(finite) if finite else 1.0
    im = ax.imshow(matrix, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=6)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=90, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine")


def plot_conflict(result: AnalysisResult, path: Path) -> Path:
    plt = _pyplot()
    conflict = result.conflict
    rows = ordered_layer_keys(conflict.per_tensor)
    steps = [f"{i + 1}" for i in range(conflict.steps)]
    by_step = [_nan_to_none(conflict.per_layer.get(r, [math.nan] * conflict.steps)) for r in rows]
    types = sorted({tensor_type(n) for n in conflict.per_tensor})
    cell: dict[tuple[str, str], list[float]] = {}
    for name, cos in conflict.per_tensor.items():
        finite = [c for c in cos if c is not None and not math.isnan(c)]
        if finite:
            cell.setdefault((layer_key(name), tensor_type(name)), []).append(sum(finite) / len(finite))
    by_type = [[sum(cell[(r, t)]) / len(cell[(r, t)]) if (r, t) in cell else math.nan for t in types] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, max(4, 0.16 * len(rows) + 1.5)),
                                  gridspec_kw={"width_ratios": [1, 2]})
    _heat(ax, by_step, rows, steps, "per layer and utility step", fig)
    ax.set_xlabel("utility batch")
    _heat(ax2, by_type, rows, types, "per layer and type (mean over steps)", fig)
    fig.suptitle(
        f"cosine(utility gradient, SPF safety-example gradient); global gate fires on "
        f"{conflict.gate_fire_rate:.0%} of {conflict.steps} steps",
        fontsize=10,
    )
    return _save(fig, path)


def plot_overlap(result: AnalysisResult, path: Path) -> Path:
    plt = _pyplot()
    curve = result.overlap.curve
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _band(ax, curve, "all weight matrices", "#2c3e50")
    cmap = plt.get_cmap("tab10")
    for i, (kind, values) in enumerate(sorted(curve.by_type.items())):
        ax.plot(curve.k, values, lw=1, color=cmap(i % 10), label=kind)
    ax.plot(curve.k, result.overlap.chance, ":", color="gray", label="chance (k/m)")
    ax.axhline(0.8, color="gray", lw=0.8, ls="--")
    ax.set(xlabel="k", ylabel="overlap", ylim=(0, 1.02),
           title=f"Overlap of the single example's top-k basis with a batch of {result.overlap.batch_size}")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_category_transfer(result: AnalysisResult, path: Path) -> Path | None:
    ct = result.category_transfer
    if ct is None:
        return None
    plt = _pyplot()
    n = len(ct.categories)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    im = ax.imshow(ct.matrix, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    for i in range(n):
        for j in range(n):
            v = ct.matrix[i][j]
            if v is not None and not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
    ax.set_xticks(range(n))
    ax.set_xticklabels(ct.categories, rotation=90, fontsize=8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(ct.categories, fontsize=8)
    ax.set(xlabel=f"batch of {ct.batch_size} from category", ylabel="single example from category",
           title=f"Category transfer: overlap at k={ct.k}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_all(result: AnalysisResult, out: Path) -> dict[str, Path]:
    """Write every plot into ``out``; returns {name: path} (no category plot when there is no matrix)."""
    paths = {
        "cer": plot_cer(result, out / "cer.png"),
        "conflict": plot_conflict(result, out / "conflict.png"),
        "overlap": plot_overlap(result, out / "overlap.png"),
        "category_transfer": plot_category_transfer(result, out / "category_transfer.png"),
    }
    return {k: v for k, v in paths.items() if v is not None}
