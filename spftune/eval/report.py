"""Markdown tables of evaluation results (one run, or several runs side by side)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METRIC_KEYS = ("harmful_rate", "over_refusal_rate", "accuracy")


def main_metric(entry: Mapping[str, Any]) -> str:
    """The headline metric key of one set's entry in ``eval.json``."""
    for key in METRIC_KEYS:
        if key in entry:
            return key
    raise ValueError(f"set entry has none of {METRIC_KEYS}: {sorted(entry)}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_rate(entry: Mapping[str, Any]) -> str:
    key = main_metric(entry)
    return f"{_pct(entry[key])} [{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}]"


def markdown_table(result: Mapping[str, Any]) -> str:
    """One row per set and judge of one ``evaluate`` result: metric, value with 95% CI, n."""
    lines = [
        "| set | kind | metric | judge | value [95% CI] | n |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in result["sets"].items():
        key = main_metric(entry)
        lines.append(f"| {name} | {entry['kind']} | {key} | {entry.get('judge', '')} | {format_rate(entry)} | {entry['n']} |")
        for judge, sub in entry.get("judges", {}).items():
            if judge == entry.get("judge"):
                continue
            extra = f", mean score {sub['mean_score']:.2f}" if sub.get("mean_score") is not None else ""
            lines.append(f"| {name} | {entry['kind']} | {key} | {judge} | {format_rate(sub)}{extra} | {sub['n']} |")
    settings = result.get("settings", {})
    gen = settings.get("generation", {})
    lines += [
        "",
        f"Model: `{settings.get('model', '?')}`; greedy={not gen.get('do_sample', False)}, "
        f"max_new_tokens={gen.get('max_new_tokens', '?')}, seed={gen.get('seed', '?')}; "
        "rates with percentile-bootstrap 95% intervals.",
    ]
    return "\n".join(lines) + "\n"


def comparison_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Several ``evaluate`` results side by side: one row per set, one column per run (headline judge)."""
    names = list(runs)
    sets: list[str] = []
    for result in runs.values():
        sets += [s for s in result["sets"] if s not in sets]
    lines = ["| set | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for s in sets:
        entries = [runs[r]["sets"].get(s) for r in names]
        key = next(main_metric(e) for e in entries if e is not None)
        cells = [format_rate(e) if e is not None else "" for e in entries]
        lines.append(f"| {s} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
