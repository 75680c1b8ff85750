"""What a grid will cost: its optimizer steps and evaluation prompts, and its time from cells measured earlier."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .grid import HOUSE_TASK, MODES, SCENARIOS, scenario_examples


def step_count(spec: dict[str, Any]) -> int:
    """Optimizer steps of one cell (data only, no model): what ``train`` will take."""
    from spftune.baselines.mixing import MIX_OPTIONS, safety_count

    scenario = SCENARIOS[spec["scenario"]]
    n = len(scenario_examples(spec["train"], scenario))
    if spec["method"] in ("mix", "spf+mix"):
        fraction = float(spec["method_options"].get("fraction", MIX_OPTIONS["fraction"].default))
        n += safety_count(n, fraction)
    return max(1, math.ceil(spec["train"]["epochs"] * math.ceil(n / spec["train"]["batch_size"])))


def eval_prompts(spec: dict[str, Any]) -> int:
    """Prompts one cell generates for: each safety and over-refusal set at the limit, plus the task items."""
    from spftune.eval import LoadContext, get_task

    ev, ctx = spec["eval"], LoadContext.create(spec["data_dir"], False)
    sets = [(n, "safety") for n in ev["safety"]] + [(n, "overrefusal") for n in ev["overrefusal"]]
    n = sum(len(get_task(name, kind).load(limit=ev["limit"], seed=0, context=ctx)) for name, kind in sets)
    return n + len(get_task(HOUSE_TASK, "utility").load(limit=ev["task_eval"], seed=0, context=ctx))


def _measured_prompts(result: dict[str, Any]) -> int:
    ev = result["eval"]
    return (sum(s["n"] for s in ev.get("safety_sets", {}).values()) + ev.get("over_refusal_n", 0)
            + ev.get("benign_refusal_n", 0) + ev.get("task_n", 0))


def _family(method: str) -> str:
    return "spf" if method.startswith("spf") else "sft"


def estimate_seconds(specs: list[dict[str, Any]], steps: dict[str, int],
                     measured: list[dict[str, Any]]) -> tuple[float, list[str]]:
    """Estimated seconds of the planned cells, from cells measured earlier (``results.json`` cells of any grid).

    Per cell: steps x seconds per step + evaluation prompts x seconds per prompt + the rest (load, save), with

        seconds per step (data, mode, method) = sft's (data, mode) x the method's ratio to sft in that mode

    where data is pure_bad or task examples (pure_bad ones are longer). sft's seconds per step on data not measured
    in a mode are scaled from the other data by the ratio measured in the other mode; a method's ratio is the
    median over the data it was measured on, and an unmeasured method takes its family's (``spf-*`` and
    ``spf+mix``: spf's; others: 1). Returns the total and every assumption made, one line each.
    """
    ok = [r for r in measured if r.get("status") == "ok"]
    train = [r for r in ok if r.get("kind") == "train" and r["train"].get("seconds_per_step")]
    if not train:
        raise ValueError("no finished training cell to calibrate from; run e.g. `bench/run.py --quick` first")
    data = lambda scenario: "pure-bad" if scenario == "pure-bad" else "task"  # noqa: E731
    sps: dict[tuple[str, str, str], list[float]] = {}
    for r in train:
        sps.setdefault((data(r["scenario"]), r["mode"], r["method"]), []).append(r["train"]["seconds_per_step"])
    med = {k: statistics.median(v) for k, v in sps.items()}
    timed = [(r, n) for r in ok if r["eval"].get("eval_seconds") and (n := _measured_prompts(r)) > 0]
    if not timed:
        raise ValueError("no measured cell records its evaluation time; calibrate from a grid run by this version")
    per_prompt = statistics.median(r["eval"]["eval_seconds"] / n for r, n in timed)
    rest = statistics.median([r["cell_seconds"] - r["eval"]["eval_seconds"] - r.get("train_wall_seconds", 0.0)
                              for r, _ in timed if r.get("cell_seconds")] or [0.0])
    notes: set[str] = set()

    def sft_seconds(d: str, mode: str) -> float:
        if (d, mode, "sft") in med:
            return med[(d, mode, "sft")]
        other = "task" if d == "pure-bad" else "pure-bad"
        for m2 in MODES:
            if (other, mode, "sft") in med and (d, m2, "sft") in med and (other, m2, "sft") in med:
                notes.add(f"sft ({mode}, {d} data) not measured: scaled from {other} data as in {m2} mode")
                return med[(other, mode, "sft")] * med[(d, m2, "sft")] / med[(other, m2, "sft")]
        raise ValueError(f"no measured sft cell in {mode} mode to calibrate from; measure one first")

    def ratio(mode: str, method: str) -> float:
        for m in dict.fromkeys((method, _family(method))):
            values = [med[k] / med[(k[0], mode, "sft")] for k in med
                      if k[1:] == (mode, m) and (k[0], mode, "sft") in med]
            if values:
                if m != method:
                    notes.add(f"{method} ({mode}) not measured: taken as {m}")
                return statistics.median(values)
        notes.add(f"{method} ({mode}) not measured: taken as costing what sft costs")
        return 1.0

    prompts = eval_prompts(specs[0])  # every cell evaluates the same sets (specs: the cells still to run)
    total = 0.0
    for s in specs:
        total += prompts * per_prompt + rest
        if s["kind"] == "train":
            total += steps[s["id"]] * sft_seconds(data(s["scenario"]), s["mode"]) * ratio(s["mode"], s["method"])
    notes.add(f"evaluation: {prompts} prompts per cell at {per_prompt:.3f} s each (measured median); "
              f"{rest:.0f} s per cell to load and save")
    return total, sorted(notes)
