"""``analysis.md``: whether each of the paper's three findings holds for this model, with the numbers."""

from __future__ import annotations

import math
from pathlib import Path

from spftune.analysis.grouping import ordered_layer_keys
from spftune.analysis.result import AnalysisResult


def _f(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def render_markdown(result: AnalysisResult) -> str:
    s = result.settings
    k10 = min(10, s["rank"])
    lines = [
        "# spftune analyze",
        "",
        f"Model `{s['model']}`; utility `{s['utility']}` ({s['n_batches']} batches of {s['batch_size']}); safety: "
        f"one SPF example vs a batch of {s['n_safety_batch']}; rank k = {s['rank']}; {s['weight_matrices']} weight "
        f"matrices of {s['tensors']} tensors.",
        "",
        "## Findings",
        "",
    ]
    for f in result.findings:
        lines.append(f"- **{f.key}: {'holds' if f.holds else 'does not hold'}.** {f.claim} Measured: {f.summary}")
    lines += ["", f"## CER({k10}) by layer type (mean over matrices)", "", "| type | safety batch | single example | utility |",
              "|---|---|---|---|"]
    for kind in sorted(result.cer_safety.by_type):
        row = [result.cer_safety.by_type[kind], result.cer_safety_single.by_type.get(kind),
               result.cer_utility.by_type.get(kind)]
        lines.append(f"| {kind} | " + " | ".join(_f(c[k10 - 1] if c else None) for c in row) + " |")
    c, cb = result.conflict, result.conflict_batch
    lines += [
        "",
        "## Conflict",
        "",
        "| safety gradient | global cosine per utility step | gate fires (c < 0) | negative per-tensor cosines |",
        "|---|---|---|---|",
        f"| SPF single example | {', '.join(_f(v, '+.3f') for v in c.global_cosine)} | {_f(c.gate_fire_rate, '.0%')} "
        f"| {_f(c.negative_share, '.0%')} |",
        f"| safety batch | {', '.join(_f(v, '+.3f') for v in cb.global_cosine)} | {_f(cb.gate_fire_rate, '.0%')} "
        f"| {_f(cb.negative_share, '.0%')} |",
        "",
        "Per-layer cosine with the SPF example, mean over steps: "
        + ", ".join(
            f"{key} {_f(sum(v) / len(v), '+.2f')}"
            for key in ordered_layer_keys(c.per_tensor)
            if (v := [x for x in c.per_layer.get(key, []) if not math.isnan(x)])
        )
        + ".",
        "",
        "## One sample is enough",
        "",
        "| k | " + " | ".join(str(k) for k in _ks(s["rank"])) + " |",
        "|---|" + "---|" * len(_ks(s["rank"])),
        "| overlap (mean) | " + " | ".join(_f(result.overlap.curve.at(k)) for k in _ks(s["rank"])) + " |",
        "| chance k/m | " + " | ".join(_f(result.overlap.chance[k - 1]) for k in _ks(s["rank"])) + " |",
    ]
    if result.overlap.per_single:
        lines += ["", f"Other single examples (one per category, held out of the batch) at k = {s['rank']}: "
                  + ", ".join(f"{cat} {_f(v)}" for cat, v in result.overlap.per_single.items()) + "."]
    ct = result.category_transfer
    if ct is not None:
        lines += ["", f"Category transfer at k = {ct.k} (single example of row category vs batch of {ct.batch_size} "
                  f"of column category): same category {_f(ct.diagonal_mean)}, other categories "
                  f"{_f(ct.off_diagonal_mean)}.", ""]
        lines += ["| single \\ batch | " + " | ".join(ct.categories) + " |", "|---|" + "---|" * len(ct.categories)]
        for cat, row in zip(ct.categories, ct.matrix):
            lines.append(f"| {cat} | " + " | ".join(_f(v, ".2f") for v in row) + " |")
    if result.files:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({Path(p).name})" for name, p in result.files.items() if p.endswith(".png")]
    timings = result.timings
    if timings:
        lines += ["", "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + "."]
    return "\n".join(lines) + "\n"


def _ks(rank: int) -> list[int]:
    return sorted({k for k in (1, 2, 5, 10, 20, rank) if k <= rank})
