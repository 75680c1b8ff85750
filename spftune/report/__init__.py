"""Reports from run directories: flat per-model metrics, a markdown report and a PNG plot.

>>> from spftune.report import load_runs, write_report
>>> write_report(load_runs(["runs/demo-20260101-120000"]), "runs/report")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spftune.report.markdown import console_table, markdown_report, markdown_table
from spftune.report.summary import load_run, load_runs, read_losses, summarize_eval

__all__ = [
    "console_table",
    "load_run",
    "load_runs",
    "markdown_report",
    "markdown_table",
    "read_losses",
    "summarize_eval",
    "write_report",
]


def write_report(
    models: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    title: str = "spftune report",
    intro: Sequence[str] = (),
    findings: Sequence[str] = (),
    details: Sequence[str] = (),
    name: str = "report",
) -> dict[str, str]:
    """Write ``<out_dir>/<name>.md`` and ``<out_dir>/<name>.png``; returns their paths."""
    from spftune.models.storage import write_text_atomic
    from spftune.report.plot import plot_models

    out = Path(out_dir)
    curves = {k: read_losses(m["_log"]) for k, m in models.items() if m.get("_log")}
    png = plot_models(models, out / f"{name}.png", curves=curves, title=title)
    text = markdown_report(models, title=title, intro=intro, findings=findings, plot=png.name, details=details)
    md = write_text_atomic(out / f"{name}.md", text)
    return {"markdown": str(md), "plot": str(png)}
