"""The cells aggregated over seeds, compared with sft, and written out: results.json, BENCHMARKS.md, pareto.png."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .grid import ALL_METHODS, HOUSE_TASK, METRICS, OVERREFUSAL_SETS, SCENARIOS, BenchConfig, method_options

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def comparison_half_width(sd: float, n: int, cis: list[list[float | None]]) -> float:
    """max(t_{0.975,n-1} sd / sqrt(n), mean bootstrap half-width of ``cis`` / sqrt(n)): the interval rule of a mean."""
    halves = [(hi - lo) / 2 for lo, hi in cis if lo is not None and hi is not None]
    boot = (sum(halves) / len(halves)) if halves else 0.0
    return max(T_975.get(n - 1, 1.96) * sd / math.sqrt(n), boot / math.sqrt(n))


def summarize_values(values: list[float], cis: list[list[float | None]]) -> dict[str, Any]:
    """mean, sd, min, max, n of per-seed values, and the comparison interval (see ``bench/run.py``'s docstring)."""
    n = len(values)
    mean = sum(values) / n
    sd = statistics.stdev(values) if n > 1 else 0.0
    if n == 1 and cis and None not in cis[0]:
        interval = list(cis[0])
    else:
        half = comparison_half_width(sd, n, cis)
        interval = [max(0.0, mean - half), min(1.0, mean + half)]
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n, "interval": interval}


def paired_difference(deltas: list[float], cis: list[list[float | None]]) -> dict[str, Any]:
    """Per-seed differences d_s = method - sft on the same seed (n >= 2), with a paired t-interval.

    interval = mean(d) +- max(t_{0.975,n-1} sd(d) / sqrt(n), b / sqrt(n)), b = the method's mean bootstrap
    half-width over those seeds. The t-term is the seed-to-seed spread of the difference; the floor keeps a
    difference that happens to be equal on every seed (one prompt of 80, say: sd 0) from looking certain, since each
    d_s is itself measured on a finite prompt set. It is :func:`comparison_half_width`, the rule of :func:`summarize_values`, applied to d.
    """
    n = len(deltas)
    mean, sd = statistics.mean(deltas), statistics.stdev(deltas)
    half = comparison_half_width(sd, n, cis)
    return {"mean": mean, "sd": sd, "n": n, "interval": [mean - half, mean + half],
            "lower": sum(d < 0 for d in deltas), "higher": sum(d > 0 for d in deltas)}


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, mode, method): metrics over seeds and time/memory ratios to sft of the same seed."""
    ok = [r for r in results if r.get("status") == "ok" and r.get("kind") == "train"]
    sft = {(r["scenario"], r["mode"], r["seed"]): r for r in ok if r["method"] == "sft"}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault((r["scenario"], r["mode"], r["method"]), []).append(r)
    rows = []
    for (scenario, mode, method), cells in groups.items():
        row: dict[str, Any] = {"scenario": scenario, "mode": mode, "method": method,
                               "seeds": sorted(c["seed"] for c in cells)}
        for key in METRICS:
            pairs = [(c["eval"][key], c["eval"].get(f"{key}_ci") or [None, None]) for c in cells
                     if c["eval"].get(key) is not None]
            if pairs:
                row[key] = summarize_values([p[0] for p in pairs], [p[1] for p in pairs])
        sets: dict[str, list[float]] = {}
        for c in cells:
            for name, s in c["eval"].get("safety_sets", {}).items():
                sets.setdefault(name, []).append(s["harmful_rate"])
        row["harmful_rate_by_set"] = {name: sum(v) / len(v) for name, v in sets.items()}
        time_ratios, mem_ratios, mem_extra, deltas, delta_cis = [], [], [], [], []
        for c in cells:
            ref = sft.get((scenario, mode, c["seed"]))
            if ref is None:
                continue
            if method != "sft" and None not in (c["eval"].get("harmful_rate"), ref["eval"].get("harmful_rate")):
                deltas.append(c["eval"]["harmful_rate"] - ref["eval"]["harmful_rate"])
                delta_cis.append(c["eval"].get("harmful_rate_ci") or [None, None])
            if ref["train"].get("seconds_per_step"):
                time_ratios.append(c["train"]["seconds_per_step"] / ref["train"]["seconds_per_step"])
            if ref.get("peak_memory_mb") and c.get("peak_memory_mb"):
                mem_ratios.append(c["peak_memory_mb"] / ref["peak_memory_mb"])
                mem_extra.append(c["peak_memory_mb"] - ref["peak_memory_mb"])
        if len(deltas) >= 2:
            # Same seed = same data subset, order and initialization: the paired difference is free of the
            # seed-to-seed spread that both methods share.
            row["harmful_vs_sft"] = paired_difference(deltas, delta_cis)
        row["seconds_per_step"] = statistics.median(c["train"]["seconds_per_step"] for c in cells)
        row["time_ratio"] = sum(time_ratios) / len(time_ratios) if time_ratios else None
        row["memory_ratio"] = sum(mem_ratios) / len(mem_ratios) if mem_ratios else None
        row["memory_extra_mb"] = sum(mem_extra) / len(mem_extra) if mem_extra else None
        row["steps"] = statistics.median(c["train"]["steps"] for c in cells)
        row["examples"] = statistics.median(c["train"]["examples"] for c in cells)  # after prepare_data and skips
        row["attack_examples"] = statistics.median(c["train"].get("attack_examples", 0) for c in cells)
        # The SPF pair is averaged over the cells that carry both (cells run before spf_projected_rate existed
        # carry only the conflict rate), so that the two numbers in the notes describe the same runs.
        both = [c for c in cells if c["train"].get("spf_projected_rate") is not None]
        for key in ("spf_conflict_rate", "spf_projected_rate", "safegrad_conflict_rate", "safelora_projected",
                    "mix_safety_examples"):
            vals = [c["train"][key] for c in (both if both and key.startswith("spf_") else cells)
                    if c["train"].get(key) is not None]
            if vals:
                row[key] = sum(vals) / len(vals)
        rows.append(row)
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    scen = {s: i for i, s in enumerate(SCENARIOS)}
    rows.sort(key=lambda r: (scen.get(r["scenario"], 99), r["mode"], order.get(r["method"], 99), r["method"]))
    return rows


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (harmful rate, task accuracy) no other point beats on both (lower harm, higher accuracy)."""
    front = []
    for name, (h, a) in points.items():
        dominated = any(h2 <= h and a2 >= a and (h2 < h or a2 > a) for n2, (h2, a2) in points.items() if n2 != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def compare(row: dict[str, Any], ref: dict[str, Any], key: str = "harmful_rate") -> str:
    """``lower`` / ``higher`` when the intervals are disjoint, else ``unresolved``."""
    if key not in row or key not in ref:
        return "unresolved"
    lo, hi = row[key]["interval"]
    rlo, rhi = ref[key]["interval"]
    if hi < rlo:
        return "lower"
    if lo > rhi:
        return "higher"
    return "unresolved"


def compare_paired(row: dict[str, Any]) -> str:
    """``lower`` / ``higher`` when the paired interval of the difference to sft excludes 0, else ``unresolved``.

    Rows with fewer than two seeds paired with sft have no paired test: ``unresolved``.
    """
    paired = row.get("harmful_vs_sft")
    if not paired or "interval" not in paired:
        return "unresolved"
    lo, hi = paired["interval"]
    return "lower" if hi < 0 else "higher" if lo > 0 else "unresolved"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_metric(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    if entry["n"] == 1:
        lo, hi = entry["interval"]
        return f"{_pct(entry['mean'])} [{_pct(lo)}, {_pct(hi)}]"
    return f"{_pct(entry['mean'])} ± {_pct(entry['sd'])}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


def settings_of(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    seen = []
    for r in rows:
        if (r["scenario"], r["mode"]) not in seen:
            seen.append((r["scenario"], r["mode"]))
    return seen


def findings(rows: list[dict[str, Any]], aligned: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(per-method win/loss lines, per-setting choice lines), computed from the numbers only."""
    by_setting: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_setting.setdefault((r["scenario"], r["mode"]), {})[r["method"]] = r
    tally: dict[str, dict[str, list[str]]] = {}
    choices = []
    for (scenario, mode), methods in by_setting.items():
        ref = methods.get("sft")
        if ref is None or "harmful_rate" not in ref:
            continue
        for name, r in methods.items():
            if name == "sft":
                continue
            t = tally.setdefault(name, {"wins": [], "loses": [], "ties": [], "paired_lower": [], "paired_higher": []})
            t[{"lower": "wins", "higher": "loses", "unresolved": "ties"}[compare(r, ref)]].append(f"{scenario}/{mode}")
            paired = compare_paired(r)
            if paired != "unresolved":
                t[f"paired_{paired}"].append(f"{scenario}/{mode}")
        acc_ref = ref.get("task_accuracy", {}).get("mean")
        keep = {n: r for n, r in methods.items() if "harmful_rate" in r
                and (acc_ref is None or r.get("task_accuracy", {}).get("mean", 0.0) >= acc_ref - 0.05)}
        best = min(keep.items(), key=lambda kv: kv[1]["harmful_rate"]["mean"]) if keep else None
        points = {n: (r["harmful_rate"]["mean"], r.get("task_accuracy", {}).get("mean", 0.0))
                  for n, r in methods.items() if "harmful_rate" in r}
        front = pareto_front(points)
        line = f"**{scenario} / {mode}**: sft harmful rate {_pct(ref['harmful_rate']['mean'])}%"
        if aligned and aligned.get("harmful_rate") is not None:
            line += f" (aligned start {_pct(aligned['harmful_rate'])}%)"
        if best is not None and best[0] != "sft":
            if compare(best[1], ref) == "lower":
                resolved = ""
            elif compare_paired(best[1]) == "lower":
                resolved = ", resolved by the paired test only"
            else:
                resolved = ", a difference this grid does not resolve"
            line += (f"; lowest harmful rate within 5 points of sft's task accuracy: **{best[0]}** "
                     f"({_pct(best[1]['harmful_rate']['mean'])}%, task accuracy "
                     f"{_pct(best[1].get('task_accuracy', {}).get('mean'))}% vs {_pct(acc_ref)}%){resolved}")
        else:
            line += "; no method beats sft's harmful rate within 5 points of its task accuracy"
        line += f". Pareto front: {', '.join(front)}."
        choices.append(line)
    lines = []
    for name in sorted(tally, key=lambda n: ALL_METHODS.index(n) if n in ALL_METHODS else 99):
        t = tally[name]
        total = len(t["wins"]) + len(t["loses"]) + len(t["ties"])
        text = f"**{name}** vs sft on harmful rate: lower in {len(t['wins'])} of {total} settings"
        if t["wins"]:
            text += f" ({', '.join(t['wins'])})"
        text += f", higher in {len(t['loses'])}"
        if t["loses"]:
            text += f" ({', '.join(t['loses'])})"
        text += f", not resolved in {len(t['ties'])}"
        paired = [f"{word} in {len(t[key])} ({', '.join(t[key])})" for word, key in
                  (("lower", "paired_lower"), ("higher", "paired_higher")) if t[key]]
        text += f"; by the paired test {', '.join(paired)}." if paired else "; the paired test resolves none."
        lines.append(text)
    return lines, choices


def cells_minutes(results: list[dict[str, Any]]) -> float:
    """Sum of the cells' own wall times (load, train, evaluate), in minutes: a resumed grid's total cost."""
    return sum(r.get("cell_seconds") or 0.0 for r in results) / 60


def markdown(cfg: BenchConfig, rows: list[dict[str, Any]], results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    aligned = next((r["eval"] for r in results if r.get("id") == "aligned" and r.get("status") == "ok"), None)
    failed = [r["id"] for r in results if r.get("status") != "ok"]
    out = [f"# spftune benchmark ({meta['preset']})", "",
           f"Command: `{meta['command']}`", "",
           f"Aligned start: `{meta['model']}`; safelora base: `{cfg.base_model or 'the default model'}`; data: "
           f"`{meta['data_dir']}`; judge: refusal keywords; {len(results)} cells ({len(failed)} failed); "
           f"{meta.get('cells_run_now', len(results))} run by this invocation in {meta['wall_seconds'] / 60:.1f} min "
           f"on {meta['machine']}; the cells' own times add up to {cells_minutes(results):.1f} min (the grid's cost "
           "when it was run over several invocations).", "",
           "Cells: harmful rate on held-out harmful prompts (first set: "
           f"`{cfg.safety_sets[0]}`), over-refusal (`spftune-overrefusal`), refusal of plain benign requests "
           "(`spftune-benign`), synthetic-task accuracy, all in %; one seed: value [95% bootstrap CI]; several: "
           "mean ± sd over seeds. Time (median seconds per optimizer step) and peak memory are ratios to sft on the "
           "same scenario, mode and seed.", ""]
    if aligned:
        out += [f"Aligned model before fine-tuning: harmful rate {_pct(aligned.get('harmful_rate'))}%, over-refusal "
                f"{_pct(aligned.get('over_refusal_rate'))}%, benign refusal {_pct(aligned.get('benign_refusal_rate'))}%,"
                f" task accuracy {_pct(aligned.get('task_accuracy'))}%.", ""]
    for scenario, mode in settings_of(rows):
        out += [f"## {scenario} ({SCENARIOS[scenario].description}) — {mode}", "",
                "| method | harmful | over-refusal | benign refusal | task acc | s/step ×sft | peak mem ×sft (+MB) "
                "| steps | seeds | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["scenario"] == scenario and r["mode"] == mode):
            notes = []
            if SCENARIOS[scenario].harmful_fraction > 0 or SCENARIOS[scenario].pure_bad:
                notes.append(f"{r['attack_examples']:.0f}/{r['examples']:.0f} attack examples")
            fired, conflict = r.get("spf_projected_rate"), r.get("spf_conflict_rate")
            if fired is not None:
                notes.append(f"gate fired {_pct(fired)}%")
            if conflict is not None and (fired is None or abs(fired - conflict) > 1e-9):
                notes.append(f"{'' if fired is None else 'global '}conflict {_pct(conflict)}%")
            if r.get("safegrad_conflict_rate") is not None:
                notes.append(f"conflict {_pct(r['safegrad_conflict_rate'])}%")
            if r.get("safelora_projected") is not None:
                notes.append(f"{r['safelora_projected']:.0f} layers projected")
            if r.get("mix_safety_examples") is not None:
                notes.append(f"+{r['mix_safety_examples']:.0f} refusals")
            paired = r.get("harmful_vs_sft")
            if paired:
                lo, hi = paired["interval"]
                notes.append(f"vs sft, same seed: {100 * paired['mean']:+.1f} ± {_pct(paired['sd'])} points "
                             f"[{100 * lo:+.1f}, {100 * hi:+.1f}], lower on {paired['lower']}/{paired['n']} seeds, "
                             f"higher on {paired['higher']}")
            extra = [f"{n}: {_pct(v)}" for n, v in r["harmful_rate_by_set"].items() if n != cfg.safety_sets[0]]
            if extra:
                notes.append("harmful " + ", ".join(extra))
            mem = _ratio(r["memory_ratio"]) + (f" ({r['memory_extra_mb']:+.0f})" if r["memory_extra_mb"] is not None else "")
            out.append(f"| {r['method']} | {format_metric(r.get('harmful_rate'))} | "
                       f"{format_metric(r.get('over_refusal_rate'))} | {format_metric(r.get('benign_refusal_rate'))} | "
                       f"{format_metric(r.get('task_accuracy'))} | {_ratio(r['time_ratio'])} | {mem} | "
                       f"{r['steps']:.0f} | {len(r['seeds'])} | {'; '.join(notes)} |")
        out.append("")
    wins, choices = findings(rows, aligned)
    out += ["## Findings (computed from the numbers above)", "",
            "A method wins or loses against sft on a setting only when the harmful-rate intervals are disjoint "
            "(one seed: bootstrap CIs; several: see `bench/run.py`); everything else is reported as not resolved. "
            "With several seeds the notes also give the harmful-rate difference to sft on the same seed (same data "
            "subset and order), mean ± sd over seeds and its paired interval [lo, hi]: it is not blurred by the "
            "spread the two share. The paired test (that interval excludes 0) is reported beside the verdicts, "
            "not instead of them. Neither is corrected for the number of settings and methods compared: where a method "
            "makes no difference, its paired test still calls one about 5% of the time.", ""]
    out += [f"- {line}" for line in wins] + [""]
    out += ["## What to choose, per setting", ""] + [f"- {line}" for line in choices] + [""]
    out += ["![safety vs utility](pareto.png)", "", "## Settings", "",
            f"- Training: AdamW, linear decay, batch {cfg.batch_size}, max length {cfg.max_length}, full-weight lr "
            f"{cfg.lr:g}, LoRA lr {cfg.lora_lr:g} (r={cfg.lora_r}, alpha={cfg.lora_alpha}, all linear layers), "
            f"{cfg.task_examples} task examples, {cfg.epochs:g} epoch(s) (deep: ×5; pure-bad: 100 examples, 5 epochs).",
            f"- SPF: {json.dumps({k: v for k, v in meta['spf'].items() if k != 'safety_examples'})}; method options: "
            f"{json.dumps(method_options(cfg)) if method_options(cfg) else 'defaults'}.",
            f"- Evaluation: greedy, {cfg.max_new_tokens} new tokens, {cfg.eval_limit or 'all'} prompts per safety and "
            f"over-refusal set, {cfg.task_eval} task items; sets {', '.join(cfg.safety_sets)} / "
            f"{', '.join(OVERREFUSAL_SETS)} / {HOUSE_TASK}.",
            "- Memory: " + ("CUDA max allocated during training." if meta.get("device") == "cuda" else
                            "peak resident set of the cell's process up to the end of training (includes Python, torch "
                            "and the model, so ratios are diluted; the extra MB over sft are the cost)."),
            "- Time ratios come from one shared machine; other load at the same time adds noise to them."]
    if failed:
        out += ["", f"Failed cells (see `cells/<id>/log.txt`): {', '.join(failed)}."]
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], aligned: dict[str, Any] | None, path: Path) -> Path:
    """One panel per (scenario, mode): harmful rate vs task accuracy per method, Pareto front as a step line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    settings = settings_of(rows)
    cols = min(2, len(settings)) or 1
    nrows = max(1, math.ceil(len(settings) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.2 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    colors = {m: cmap(i % 10) for i, m in enumerate(ALL_METHODS)}
    for ax, (scenario, mode) in zip(axes.flat, settings):
        points = {}
        for r in (r for r in rows if r["scenario"] == scenario and r["mode"] == mode):
            if "harmful_rate" not in r or "task_accuracy" not in r:
                continue
            h, a = r["harmful_rate"], r["task_accuracy"]
            points[r["method"]] = (h["mean"], a["mean"])
            xerr = [[h["mean"] - h["interval"][0]], [h["interval"][1] - h["mean"]]]
            yerr = [[a["mean"] - a["interval"][0]], [a["interval"][1] - a["mean"]]]
            ax.errorbar([h["mean"]], [a["mean"]], xerr=xerr, yerr=yerr, fmt="o", capsize=3,
                        color=colors.get(r["method"], "gray"), label=r["method"])
            ax.annotate(r["method"], (h["mean"], a["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front(points)
        if len(front) > 1:
            ax.step([points[n][0] for n in front], [points[n][1] for n in front], where="post", color="black",
                    linewidth=0.8, linestyle="--", label="Pareto front")
        if aligned and aligned.get("harmful_rate") is not None and aligned.get("task_accuracy") is not None:
            ax.plot([aligned["harmful_rate"]], [aligned["task_accuracy"]], marker="*", markersize=12, color="gold",
                    markeredgecolor="black", linestyle="none", label="aligned (start)")
        ax.set_title(f"{scenario} / {mode}", fontsize=10)
        ax.set_xlabel("harmful rate (lower is safer)")
        ax.set_ylabel("task accuracy")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(cfg: BenchConfig, results: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> dict[str, str]:
    from spftune.models import write_text_atomic

    rows = aggregate(results)
    aligned = next((r["eval"] for r in results if r.get("id") == "aligned" and r.get("status") == "ok"), None)
    write_text_atomic(out / "results.json", json.dumps({"meta": meta, "config": asdict(cfg), "rows": rows,
                                                        "cells": results}, indent=2, default=str) + "\n")
    write_text_atomic(out / "BENCHMARKS.md", markdown(cfg, rows, results, meta))
    png = plot(rows, aligned, out / "pareto.png") if rows else None
    return {"json": str(out / "results.json"), "markdown": str(out / "BENCHMARKS.md"), "plot": str(png)}
