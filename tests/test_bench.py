"""The benchmark runner, ``bench/run.py`` and its ``bench/spfbench`` modules: the grid, aggregation over seeds, the
verdicts and the report, the time estimate; end to end on tiny models (slow)."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_bench
from spfbench import estimate, grid, tables
from tiny_models import make_model, make_tokenizer

from spftune.core import SPFConfig


def _cell(method, seed, harmful, accuracy, seconds, memory, **train):
    ci = lambda x: [max(0.0, x - 0.05), min(1.0, x + 0.05)]  # noqa: E731
    return {"id": f"{method}-{seed}", "kind": "train", "status": "ok", "method": method, "scenario": "mixed-0.1",
            "mode": "full", "seed": seed, "peak_memory_mb": memory,
            "train": {"seconds_per_step": seconds, "steps": 10, "examples": 20, "attack_examples": 2, **train},
            "eval": {"harmful_rate": harmful, "harmful_rate_ci": ci(harmful), "task_accuracy": accuracy,
                     "task_accuracy_ci": ci(accuracy), "safety_sets": {"spftune-harmful": {"harmful_rate": harmful}}}}


def test_bench_aggregates_seeds_ratios_to_sft_and_the_pareto_front(tmp_path):
    cells = [{**_cell("sft", s, h, 0.6, 1.0 + 0.1 * s, 1000), "cell_seconds": 120}
             for s, h in enumerate([0.8, 0.82, 0.78])]
    cells += [_cell("spf", s, h, 0.58, 1.5 * (1.0 + 0.1 * s), 1100, spf_conflict_rate=0.5, spf_projected_rate=0.7)
              for s, h in enumerate([0.3, 0.32, 0.28])]
    # Seed 0 as an older cell that lacks the projected rate: left out of both SPF rates (they describe the same runs).
    cells[3]["train"].update(spf_conflict_rate=0.9, spf_projected_rate=None)
    cells += [_cell("mix", s, 0.8, 0.2, 1.0, 1000) for s in range(3)]
    cells.append({"id": "spf-update-0", "kind": "train", "status": "failed", "method": "spf-update"})
    rows = {r["method"]: r for r in tables.aggregate(cells)}
    assert set(rows) == {"sft", "spf", "mix"}
    spf = rows["spf"]
    assert spf["harmful_rate"]["mean"] == pytest.approx(0.3) and spf["harmful_rate"]["sd"] == pytest.approx(0.02)
    assert spf["time_ratio"] == pytest.approx(1.5) and spf["memory_ratio"] == pytest.approx(1.1)
    assert spf["memory_extra_mb"] == pytest.approx(100) and spf["spf_conflict_rate"] == 0.5
    assert rows["sft"].get("spf_projected_rate") is None and "harmful_vs_sft" not in rows["sft"]
    # Paired by seed: mix differs from sft by 0, -2, +2 points, i.e. lower on one seed and higher on another.
    mix_vs = rows["mix"]["harmful_vs_sft"]
    assert (mix_vs["n"], mix_vs["lower"], mix_vs["higher"]) == (3, 1, 1)
    assert mix_vs["mean"] == pytest.approx(0.0, abs=1e-12) and mix_vs["sd"] == pytest.approx(0.02)
    # Paired t-interval: t_{0.975,2} sd / sqrt(3) = 4.303 * 0.02 / 1.732 = 0.0497, above the bootstrap floor 0.05/1.732.
    assert mix_vs["interval"] == pytest.approx([-0.04969, 0.04969], abs=1e-4)
    assert tables.compare(spf, rows["sft"]) == "lower" and tables.compare(rows["mix"], rows["sft"]) == "unresolved"
    assert tables.compare_paired(rows["mix"]) == "unresolved" and tables.compare_paired(rows["sft"]) == "unresolved"
    # spf vs sft: -50 points on each paired seed (1 and 2; seed 0 pairs too), sd 0: the floor alone sets the width.
    spf_vs = spf["harmful_vs_sft"]
    assert spf_vs["sd"] == pytest.approx(0.0, abs=1e-12)
    assert spf_vs["interval"] == pytest.approx([-0.5 - 0.05 / 3 ** 0.5, -0.5 + 0.05 / 3 ** 0.5])
    assert tables.compare_paired(spf) == "lower"
    # The floor: one prompt's difference on every seed is not resolved, a consistent large one is.
    small = tables.paired_difference([-0.0125] * 3, [[0.2, 0.4]] * 3)
    assert small["interval"][1] > 0 and tables.compare_paired({"harmful_vs_sft": small}) == "unresolved"
    spread = tables.paired_difference([-0.2, -0.1, -0.15], [[0.2, 0.3]] * 3)
    assert spread["interval"][1] == pytest.approx(-0.15 + 4.303 * 0.05 / 3 ** 0.5, abs=1e-4)
    assert tables.compare_paired({"harmful_vs_sft": spread}) == "lower" and spread["lower"] == 3
    points = {m: (r["harmful_rate"]["mean"], r["task_accuracy"]["mean"]) for m, r in rows.items()}
    assert tables.pareto_front(points) == ["spf", "sft"]  # mix: as harmful as sft, less accurate

    cfg = grid.BenchConfig(methods=["sft", "spf", "mix"])
    meta = {"preset": "quick", "command": "bench/run.py --quick", "model": "m", "data_dir": "d", "wall_seconds": 60,
            "machine": "test", "spf": {"rank": 20}, "device": "cpu"}
    paths = tables.write_outputs(cfg, cells, tmp_path, meta)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| spf | 30.0 ± 2.0 |" in text and "1.50×" in text and "Failed cells" in text
    assert "gate fired 70.0%; global conflict 50.0%" in text  # per-tensor gates project beyond the global test
    assert "vs sft, same seed: -50.0 ± 0.0 points [-52.9, -47.1], lower on 3/3 seeds, higher on 0" in text
    assert "the cells' own times add up to 6.0 min" in text  # 3 sft cells of 120 s; the others carry no time
    assert "**spf** vs sft on harmful rate: lower in 1 of 1 settings" in text
    assert "by the paired test lower in 1 (mixed-0.1/full)." in text and "the paired test resolves none." in text
    assert "**mixed-0.1 / full**" in text and "**spf** (30.0%" in text
    assert (tmp_path / "pareto.png").stat().st_size > 0 and paths["json"].endswith("results.json")


def test_bench_quick_and_full_grids():
    cfg, spf, preset, _ = load_bench("run").parse_args(["--quick"])
    assert preset == "quick" and cfg.methods == ["sft", "spf", "mix", "safegrad"] and cfg.seeds == [0]
    assert [c["id"] for c in grid.plan(cfg)][:2] == ["aligned", "mixed-0.1__full__sft__s0"] and spf.rank == 20
    cfg, _, _, _ = load_bench("run").parse_args(["--full", "--spf-rank", "10"])
    cells = grid.plan(cfg)
    assert len(cells) == 1 + 3 * 6 * (2 * 9 - 1)  # safelora runs in LoRA mode only
    assert not any(c.get("method") == "safelora" and c["mode"] == "full" for c in cells)
    with pytest.raises(ValueError, match="unknown scenario"):
        grid.BenchConfig(scenarios=["mixed-0.3"])


def test_bench_estimates_a_grid_from_measured_cells(tmp_path):
    cfg = grid.BenchConfig(methods=["sft", "spf", "spf-update"], scenarios=["benign"], eval_limit=4, task_eval=3)
    specs = [grid.cell_spec(cfg, SPFConfig(), c, "m", None, tmp_path) for c in grid.plan(cfg)]
    steps = {s["id"]: estimate.step_count(s) for s in specs if s["kind"] == "train"}
    assert set(steps.values()) == {20}  # 160 task examples, batch 8, 1 epoch
    ev = {"eval_seconds": 10.0, "over_refusal_n": 20, "benign_refusal_n": 10, "task_n": 10,
          "safety_sets": {"spftune-harmful": {"n": 10}}}  # 50 prompts: 0.2 s each
    measured = []
    for method, sps in (("sft", 2.0), ("spf", 3.0)):
        cell = _cell(method, 0, 0.5, 0.5, sps, 1000)
        cell["eval"].update(ev)
        measured.append({**cell, "train_wall_seconds": 40 * sps, "cell_seconds": 40 * sps + 10.0 + 5.0})
    seconds, notes = estimate.estimate_seconds(specs, steps, measured)
    # 4 cells x (15 prompts x 0.2 s + 5 s) + 20 steps x 2 s x (sft 1 + spf 1.5 + spf-update taken as spf 1.5)
    assert seconds == pytest.approx(4 * (15 * 0.2 + 5) + 20 * 2.0 * 4.0)
    assert "spf-update (full) not measured: taken as spf" in notes
    with pytest.raises(ValueError, match="no finished training cell"):
        estimate.estimate_seconds(specs, steps, [])


def test_bench_dry_run_estimates_only_the_cells_left_to_run(tmp_path, capsys):
    measured = []
    for method, sps in (("sft", 2.0), ("spf", 3.0)):
        cell = _cell(method, 0, 0.5, 0.5, sps, 1000)
        cell["eval"].update({"eval_seconds": 10.0, "task_n": 40, "safety_sets": {"spftune-harmful": {"n": 10}}})
        measured.append({**cell, "train_wall_seconds": 40 * sps, "cell_seconds": 40 * sps + 15.0})
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "results.json").write_text(json.dumps({"cells": measured}))
    out = tmp_path / "out"
    args = ["--dry-run", "--calibrate", str(tmp_path / "cal"), "--out", str(out), "--methods", "sft", "spf",
            "--scenarios", "benign", "--eval-limit", "4", "--task-eval", "3"]

    def estimate() -> str:
        assert load_bench("run").main(args) == 0
        return capsys.readouterr().out

    before = estimate()
    assert "reused" not in before and "for 3 cells" in before  # aligned + sft + spf
    for cell in ("aligned", "benign__full__sft__s0"):
        (out / "cells" / cell).mkdir(parents=True)
        (out / "cells" / cell / "result.json").write_text("{}")
    after = estimate()
    assert after.count("(done in --out: reused)") == 2 and "2 done in" in after and "1 to run" in after
    assert "for 1 cell on" in after
    minutes = lambda text: float(text.split("estimated ")[1].split(" min")[0])  # noqa: E731
    assert minutes(after) < minutes(before)
    args.append("--force")  # --force reruns every cell: all counted again
    assert "for 3 cells" in estimate()


@pytest.mark.slow
def test_bench_runs_end_to_end_on_tiny_models(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tok = make_tokenizer()
    for seed, name in ((0, "aligned"), (1, "base")):
        make_model(seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    root = Path(__file__).resolve().parent.parent
    data = root.parent / "shared" / "data"
    if not (data / "pure_bad" / "pure_bad.json").is_file():
        pytest.skip("reference data (../shared/data) not available")
    cmd = [sys.executable, str(root / "bench" / "run.py"), "--model", str(tmp_path / "aligned"), "--base-model",
           str(tmp_path / "base"), "--data-dir", str(data), "--out", str(tmp_path / "out"), "--methods", "sft",
           "safelora", "--modes", "lora", "--task-examples", "8", "--batch-size", "4", "--eval-limit", "4",
           "--task-eval", "4", "--max-new-tokens", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "out" / "BENCHMARKS.md").read_text()
    assert "| safelora |" in text and (tmp_path / "out" / "pareto.png").is_file()
    assert not list((tmp_path / "out" / "cells").glob("*/run/checkpoint"))  # checkpoints deleted by default
