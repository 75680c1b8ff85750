"""Text renderings of per-model metrics: the console table and the markdown report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = (
    ("harmful_rate", "harmful rate", "lower is safer"),
    ("over_refusal_rate", "over-refusal", "lower is better"),
    ("benign_refusal_rate", "benign refusal", "lower is better"),
    ("task_accuracy", "task accuracy", "higher is better"),
    ("seconds_per_step", "s/step", "training wall time per optimizer step"),
)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def format_cell(metrics: Mapping[str, Any], key: str, *, ci: bool = True) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    if key == "seconds_per_step":
        return f"{float(value):.2f}"
    interval = metrics.get(f"{key}_ci")
    if ci and interval and None not in interval:
        return f"{_pct(value)} [{_pct(interval[0])}, {_pct(interval[1])}]"
    return _pct(value)


def _columns(models: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(m.get(c[0]) is not None for m in models.values())]


def console_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain fixed-width table (values without intervals) for the terminal."""
    cols = _columns(models)
    header = ["model"] + [c[1] for c in cols]
    rows = [[name] + [format_cell(m, c[0], ci=False) for c in cols] for name, m in models.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    cols = _columns(models)
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(format_cell(m, c[0]) for c in cols) + " |")
    return "\n".join(lines)


def _set_line(models: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for key, label in (("harmful", "harmful rate"), ("over_refusal", "over-refusal"),
                       ("benign_refusal", "benign refusal"), ("task", "task accuracy")):
        m = next((m for m in models.values() if m.get(f"{key}_set")), None)
        if m is not None:
            parts.append(f"{label}: `{m[f'{key}_set']}` (n = {m.get(f'{key}_n')})")
    return "; ".join(parts)


def markdown_report(
    models: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "spftune report",
    intro: Sequence[str] = (),
    findings: Sequence[str] = (),
    plot: str | None = None,
    details: Sequence[str] = (),
) -> str:
    """The report: title, intro lines, the table with 95% intervals, the sets used, findings, plot, details."""
    lines = [f"# {title}", ""]
    lines += [*intro, ""] if intro else []
    lines += [markdown_table(models), ""]
    sets = _set_line(models)
    if sets:
        lines += [f"Sets (keyword refusal judge; 95% percentile-bootstrap intervals): {sets}.", ""]
    if findings:
        lines += ["## What this run shows", ""] + [f"- {f}" for f in findings] + [""]
    if plot:
        lines += [f"![metrics]({plot})", ""]
    if details:
        lines += ["## Details", ""] + list(details) + [""]
    return "\n".join(lines)
