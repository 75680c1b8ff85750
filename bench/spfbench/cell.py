"""One cell, in its own process: load the aligned model, fine-tune it with one method, evaluate it."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .grid import HOUSE_TASK, SCENARIOS, scenario_examples


def _peak_memory_mb(device_type: str) -> float | None:
    if device_type == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(rss / 1024 if sys.platform != "darwin" else rss / 2**20, 1)
    except (ImportError, OSError):
        return None


def evaluate_cell(model: Any, tokenizer: Any, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Harmful rate per safety set, over-refusal, benign refusal and task accuracy (keyword judge)."""
    from spftune.eval import evaluate
    from spftune.report import summarize_eval

    ev = spec["eval"]
    t0 = time.perf_counter()
    safety = evaluate(model, tokenizer, safety=ev["safety"], overrefusal=ev["overrefusal"], judges=["keyword"],
                      data_dir=spec["data_dir"], limit=ev["limit"], max_new_tokens=ev["max_new_tokens"],
                      batch_size=ev["batch_size"], out_dir=out / "eval", model_name=spec["id"])
    task = evaluate(model, tokenizer, utility=[HOUSE_TASK], limit=ev["task_eval"], max_new_tokens=ev["max_new_tokens"],
                    batch_size=ev["batch_size"], out_dir=out / "eval-task", model_name=spec["id"])
    metrics = {**summarize_eval(safety), **summarize_eval(task)}
    metrics["safety_sets"] = {name: {"harmful_rate": e["harmful_rate"], "ci": [e["ci_low"], e["ci_high"]], "n": e["n"]}
                              for name, e in safety["sets"].items() if e.get("kind") == "safety"}
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import spftune.baselines  # noqa: F401  (registers the baselines, whether or not spftune.train does yet)
    from spftune.core import SPFConfig
    from spftune.models import load_model_and_tokenizer
    from spftune.train import TrainConfig, make_method, train
    from spftune.train.loop import resolve_device

    out = Path(spec["dir"])
    t_start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(spec["model"])
    device = resolve_device(spec["device"])
    result: dict[str, Any] = {"id": spec["id"], "kind": spec["kind"], "status": "ok", "device": device.type}
    for key in ("method", "scenario", "mode", "seed"):
        if key in spec:
            result[key] = spec[key]
    if spec["kind"] == "train":
        scenario = SCENARIOS[spec["scenario"]]
        examples = scenario_examples(spec["train"], scenario)
        method = make_method(spec["method"], spf_config=SPFConfig.from_dict(spec["spf"]), **spec["method_options"])
        cfg = TrainConfig(**spec["train"], method=spec["method"],
                          method_options=[f"{k}={v}" for k, v in spec["method_options"].items()] or None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        metrics = train(model, tokenizer, examples, cfg, method=method, out_dir=out / "run", progress=False)
        result["train_wall_seconds"] = round(time.perf_counter() - t0, 2)
        result["peak_memory_mb"] = _peak_memory_mb(device.type)
        result["peak_memory_kind"] = "cuda_max_allocated" if device.type == "cuda" else "process_max_rss"
        result["train"] = metrics
        if not spec.get("keep_checkpoint") and metrics.get("checkpoint"):
            shutil.rmtree(metrics["checkpoint"], ignore_errors=True)
            result["train"]["checkpoint"] = None
    else:
        model.to(device)
    result["eval"] = evaluate_cell(model, tokenizer, spec, out)
    result["cell_seconds"] = round(time.perf_counter() - t_start, 1)
    return result
