"""The report's PNG: headline rates per model with 95% intervals, and training-loss curves when logs exist.

The only module of :mod:`spftune.report` that imports matplotlib (Agg backend, no display needed).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spftune.models.storage import write_bytes_atomic

_METRICS = (
    ("harmful_rate", "harmful rate", "#c0392b"),
    ("over_refusal_rate", "over-refusal", "#e67e22"),
    ("benign_refusal_rate", "benign refusal", "#f1c40f"),
    ("task_accuracy", "task accuracy", "#2980b9"),
)


def plot_models(
    models: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    curves: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    title: str = "spftune",
) -> Path:
    """Grouped bars (one group per metric, one bar per model, CI whiskers); a loss panel when ``curves`` is given."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    metrics = [m for m in _METRICS if any(v.get(m[0]) is not None for v in models.values())]
    names = list(models)
    with_curves = bool(curves) and any(len(c) for c in curves.values())
    fig, axes = plt.subplots(1, 2 if with_curves else 1, figsize=(11 if with_curves else 7, 4), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(names))
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, (key, _, _) in enumerate(metrics):
            value = models[name].get(key)
            if value is None:
                continue
            ci = models[name].get(f"{key}_ci") or [value, value]
            ci = [value if c is None else c for c in ci]
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(value)
            lo.append(max(0.0, value - ci[0]))
            hi.append(max(0.0, ci[1] - value))
        ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=3, color=cmap(j % 10), label=name)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y + 0.02, f"{100 * y:.0f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m[1] for m in metrics], fontsize=9)
    ax.set_ylim(0, 1.3)  # room for the legend above the 100% bars
    ax.set_ylabel("rate (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(names)))
    if with_curves:
        cx = axes[0][1]
        for j, name in enumerate(names):
            points = (curves or {}).get(name) or []
            if points:
                cx.plot([p[0] for p in points], [p[1] for p in points], color=cmap(j % 10), label=name, lw=1.2)
        cx.set_xlabel("optimizer step")
        cx.set_ylabel("training loss")
        cx.set_title("fine-tuning loss", fontsize=10)
        cx.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())
