"""PNG bar charts of evaluation results. The only module of the harness that imports matplotlib (Agg backend)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spftune.eval.report import main_metric
from spftune.models.storage import write_bytes_atomic

_COLORS = {"safety": "#c0392b", "overrefusal": "#e67e22", "utility": "#2980b9"}


def plot_results(runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Horizontal bars of every set's headline metric with 95% intervals, one bar per run; written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = list(runs)
    sets: list[str] = []
    for result in runs.values():
        sets += [s for s in result["sets"] if s not in sets]
    height = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.45 * len(sets) * max(len(names), 1)))
    for j, run in enumerate(names):
        for i, s in enumerate(sets):
            entry = runs[run]["sets"].get(s)
            if entry is None:
                continue
            key = main_metric(entry)
            value = entry[key]
            y = i + (j - (len(names) - 1) / 2) * height
            err = [[value - entry["ci_low"]], [entry["ci_high"] - value]]
            color = _COLORS.get(entry["kind"], "#7f8c8d")
            ax.barh(y, value, height=height * 0.9, xerr=err, color=color, alpha=1.0 - 0.5 * j / max(len(names), 1),
                    ecolor="black", capsize=2)
            label = f"{100 * value:.1f}%" + (f" ({run})" if len(names) > 1 else "")
            ax.text(max(value, entry["ci_high"]) + 0.015, y, label, va="center", fontsize=7)
    ax.set_yticks(range(len(sets)))
    ax.set_yticklabels([f"{s}\n{main_metric(next(r['sets'][s] for r in runs.values() if s in r['sets']))}"
                        for s in sets], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.2)
    ax.set_xlabel("rate (95% bootstrap CI)")
    ax.set_title(title or "spftune evaluation", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def plot_eval(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Chart of one ``evaluate`` result."""
    return plot_results({"run": result}, path, title=f"spftune evaluation: {result.get('settings', {}).get('model', '')}")
