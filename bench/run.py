"""The benchmark: every method x scenario x mode x seed, from the same aligned model, in one harness.

    .venv/bin/python bench/run.py --quick --model ALIGNED_CHECKPOINT        # 11.4 min on 2 idle AVX2 cores (measured)
    .venv/bin/python bench/run.py --full  --model ALIGNED_CHECKPOINT        # the whole grid (see below)
    .venv/bin/python bench/run.py --quick --dry-run                         # print the grid, train nothing
    .venv/bin/python bench/run.py --full --dry-run --calibrate runs/bench-quick   # + its time, from measured cells
    .venv/bin/python bench/run.py --full --methods sft spf --scenarios deep --modes lora --seeds 0 1 2

Without ``--model`` the default recipe of ``spftune align`` is run first (cached after the first run). ``--data-dir``
(default ``$SPFTUNE_DATA``, else ``../shared/data`` next to the project) must hold ``pure_bad/pure_bad.json``; it
is read in place, never copied. Every flag can also come from ``--config FILE.yaml``; ``--spf-*`` flags set the SPF
filter of the SPF-based methods, ``--method-options METHOD:KEY=VALUE`` a method's options.

Grid
    methods    sft, spf, spf-conflict-only, spf-per-tensor, spf-update, mix, spf+mix, safegrad, safelora
               (safelora is post-hoc on LoRA adapters: LoRA mode only)
    scenarios  benign       the synthetic utility task (``spftune-synthetic``, ``task_examples`` examples)
               mixed-P      the same N examples of which a share P (0.05, 0.1, 0.2) are pure_bad examples
                            (exactly P*N rounded half up, replacing task examples: same steps at every P)
               pure-bad     pure_bad only: 100 of its examples (seeded subset), 5 epochs
               deep         mixed-0.1 for 5x the epochs
    modes      full (all weights, ``--lr``), lora (r=16, alpha=32 on all linear layers, ``--lora-lr``)
    seeds      the seed of data subset, mixing, order and LoRA initialization

    --quick    sft spf mix safegrad | mixed-0.1 | full | seed 0 | 160 task examples, 1 epoch | 40 prompts per
               evaluation set, 30 task items
    --full     all methods | all scenarios | full and lora | seeds 0 1 2 | 320 task examples | all spftune-harmful
               (80), advbench (100 of 520), over-refusal (40), benign (80), 100 task items: 307 cells. Its wall
               time is measured by the run and written into the report; budget hours on a GPU, days on 2 CPU cores
               (about 40 h estimated on the project's 2-core machine). ``--dry-run --calibrate DIR`` estimates it for
               your machine from the cells of an earlier run in DIR (a ``--quick`` one, say); cells already done
               in ``--out`` are listed as reused and left out of the estimate, so it also says what a resumed grid
               has left.

Each cell (one method on one scenario, mode and seed; plus the aligned model itself, evaluated once) runs in a fresh
subprocess, so that peak memory is that cell's own (CUDA: ``max_memory_allocated`` over training; CPU: the peak
resident set of the process up to the end of training, which includes Python, torch and the model, so the ratio is
diluted towards 1: the extra MB are reported too) and a crash costs one cell. A cell whose ``result.json`` exists is
reused unless ``--force``: an interrupted grid resumes. Training is :func:`spftune.train.train` (the one loop),
evaluation :func:`spftune.eval.evaluate` with the keyword judge; nothing here re-implements either.

Outputs in ``--out``: ``cells/<cell>/`` (``cell.json``, ``result.json``, the run's ``config.yaml`` and ``log.jsonl``,
evaluation outputs; checkpoints are deleted unless ``--keep-checkpoints``), ``results.json`` (every cell and the
aggregated rows), ``BENCHMARKS.md`` (tables, findings computed from the numbers, the exact command) and
``pareto.png`` (harmful rate vs task accuracy per setting, Pareto front drawn). Harmful text is never printed.

Intervals: a single seed shows the evaluation's 95% bootstrap interval; several seeds show mean +- sd, and the
comparison interval of a mean is mean +- max(t_{0.975,n-1} sd / sqrt(n), mean bootstrap half-width / sqrt(n)).
A method "wins" (or "loses") against sft on a setting when its harmful-rate interval lies entirely below (above)
sft's; otherwise the difference is not resolved by this grid. With two or more seeds the notes also report the paired
difference to sft (same seed: same data subset and order), mean +- sd, on how many seeds it was lower or higher, and
its paired interval, the same rule applied to the per-seed differences (t-term from their spread, floor from the
method's bootstrap half-width). The paired test (that interval excludes 0) is the sharper one for this design: a
consistent effect shows there even when a large seed-to-seed spread, shared by both methods, keeps the seed-mean
intervals overlapping. The report gives both verdicts; neither is corrected for multiple comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spfbench.cell import run_cell
from spfbench.estimate import estimate_seconds, step_count
from spfbench.grid import (
    FULL,
    QUICK,
    ROOT,
    SCENARIOS,
    BenchConfig,
    cell_spec,
    plan,
    resolve_data_dir,
    spf_dict,
)
from spfbench.tables import write_outputs


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def reused(cfg: BenchConfig, spec: dict[str, Any]) -> bool:
    """Whether a cell's finished result in ``--out`` is taken as is (always for a report, else unless ``--force``)."""
    return (Path(spec["dir"]) / "result.json").is_file() and (cfg.report_only or not cfg.force)


def run_grid(cfg: BenchConfig, spf: Any, out: Path, command: str, preset: str) -> int:
    t_start = time.perf_counter()
    cells = plan(cfg)
    needs_data = (any(SCENARIOS[s].harmful_fraction > 0 or SCENARIOS[s].pure_bad for s in cfg.scenarios)
                  or any(not s.startswith("spftune-") for s in cfg.safety_sets))
    data_dir = resolve_data_dir(cfg, needs_data and not cfg.report_only)
    if cfg.dry_run:
        specs = [cell_spec(cfg, spf, c, cfg.model or "<aligned>", data_dir, out) for c in cells]
        steps = {s["id"]: step_count(s) for s in specs if s["kind"] == "train"}
        # A cell the real run would reuse is listed, but not counted in the estimate.
        done = {s["id"] for s in specs if reused(cfg, s)}
        for s in specs:
            what = f"{steps[s['id']]:5d} steps" if s["kind"] == "train" else " eval only"
            print(f"{s['id']:60s} {what}" + ("  (done in --out: reused)" if s["id"] in done else ""))
        print(f"{len(specs)} cells, {sum(steps.values())} optimizer steps in all"
              + (f"; {len(done)} done in {out}, {len(specs) - len(done)} to run" if done else ""))
        specs = [s for s in specs if s["id"] not in done]
        if cfg.calibrate and not specs:
            print("nothing left to run: every cell is done in --out")
            return 0
        if cfg.calibrate:
            measured = []
            for path in cfg.calibrate:
                file = Path(path).expanduser() / "results.json"
                if not file.is_file():
                    raise FileNotFoundError(f"--calibrate {path}: no results.json there; give a finished --out folder")
                measured += json.loads(file.read_text(encoding="utf-8"))["cells"]
            seconds, notes = estimate_seconds(specs, steps, measured)
            amount = f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.0f} min"
            print(f"estimated {amount} for {len(specs)} cell{'s' * (len(specs) != 1)} on the machine that measured {', '.join(cfg.calibrate)}:")
            for line in notes:
                print(f"  - {line}")
        return 0
    if cfg.report_only:
        model = cfg.model or "<aligned>"
    elif cfg.model:
        from spftune.models import resolve_model

        run_dir = Path(cfg.model).expanduser()  # an `spftune align` / `finetune` run directory: its checkpoint
        checkpoint = run_dir / "checkpoint"
        model = resolve_model(str(checkpoint) if (checkpoint / "config.json").is_file() else cfg.model)
    else:
        from spftune.train.align import AlignConfig, align

        _log("no --model: aligning the default model with the default recipe (cached after the first run)")
        model = align(AlignConfig(), progress=False)["checkpoint"]
    out.mkdir(parents=True, exist_ok=True)
    results, durations = [], []
    for i, cell in enumerate(cells):
        spec = cell_spec(cfg, spf, cell, model, data_dir, out)
        cell_dir = Path(spec["dir"])
        result_file = cell_dir / "result.json"
        if reused(cfg, spec):
            results.append(json.loads(result_file.read_text(encoding="utf-8")))
            continue
        if cfg.report_only:
            continue
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / "cell.json").write_text(json.dumps(spec, indent=2, default=str), encoding="utf-8")
        t0 = time.perf_counter()
        with open(cell_dir / "log.txt", "w", encoding="utf-8") as log:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cell", str(cell_dir / "cell.json")],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - t0
        durations.append(seconds)
        if proc.returncode == 0 and result_file.is_file():
            result = json.loads(result_file.read_text(encoding="utf-8"))
        else:
            result = {"id": cell["id"], "kind": cell["kind"], "status": "failed", "returncode": proc.returncode,
                      "log": str(cell_dir / "log.txt")}
            result.update({k: cell[k] for k in ("method", "scenario", "mode", "seed") if k in cell})
        results.append(result)
        left = len(cells) - i - 1
        eta = statistics.mean(durations) * left / 60
        _log(f"{i + 1}/{len(cells)} {cell['id']}: {result['status']} in {seconds:.0f} s; elapsed "
             f"{(time.perf_counter() - t_start) / 60:.1f} min, ~{eta:.0f} min left")
    import torch

    device = next((r.get("device") for r in results if r.get("device")), None)
    meta = {"preset": preset, "command": command, "model": model, "data_dir": str(data_dir) if data_dir else None,
            "wall_seconds": time.perf_counter() - t_start, "spf": spf_dict(spf),
            "device": device, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
            + (f", {torch.cuda.get_device_name(0)}" if device == "cuda" else ""),
            "cells_run_now": len(durations)}
    if cfg.report_only:
        previous = out / "results.json"
        if previous.is_file():
            before = json.loads(previous.read_text(encoding="utf-8"))["meta"]
            meta["wall_seconds"] = before.get("wall_seconds", 0.0)  # the run's, not this report's
            meta["cells_run_now"] = before.get("cells_run_now", 0)
    paths = write_outputs(cfg, results, out, meta)
    _log(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Any, str, argparse.Namespace]:
    from spftune.cli.options import Section, add_section, build, read_safety_examples, resolve
    from spftune.core import SPFConfig

    sections = (Section(BenchConfig, title="benchmark"),
                Section(SPFConfig, prefix="spf_", title="SPF filter (the SPF-based methods)",
                        converters={"safety_examples": read_safety_examples}))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="The quick grid (default; see the module docstring).")
    preset.add_argument("--full", action="store_true", help="The full grid.")
    parser.add_argument("--config", metavar="FILE.yaml", default=None, help="YAML file of these options.")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    for section in sections:
        add_section(parser, section)
    args = parser.parse_args(argv)
    name = "full" if args.full else "quick"
    values = resolve(argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("quick", "full", "cell")}),
                     sections)
    values = {**(FULL if args.full else QUICK), **values}
    values.setdefault("out", str(Path("runs") / f"bench-{name}"))
    cfg = build(sections[0], values)
    spf = build(sections[1], values)
    return cfg, spf, name, args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:
        spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        from spftune.models import write_text_atomic

        result = run_cell(spec)
        write_text_atomic(Path(spec["dir"]) / "result.json", json.dumps(result, indent=2, default=str) + "\n")
        return 0
    try:
        cfg, spf, preset, _ = parse_args(argv)
        command = " ".join([".venv/bin/python", "bench/run.py", *map(shlex.quote, argv)])
        return run_grid(cfg, spf, Path(cfg.out), command, preset)
    except (ValueError, FileNotFoundError) as e:
        print(f"bench/run.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
