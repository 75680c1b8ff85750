"""Flat per-model metrics (the ``metrics.json`` of run directories) and reading them back from run directories.

One model's metrics are a flat dict::

    {"harmful_rate": r, "harmful_rate_ci": [lo, hi], "harmful_n": n, "harmful_set": "spftune-harmful",
     "over_refusal_rate": ..., "over_refusal_rate_ci": [...], "over_refusal_n": ..., "over_refusal_set": ...,
     "benign_refusal_rate": ..., ..., "task_accuracy": ..., "task_accuracy_ci": [...], "task_n": ..., "task_set": ...,
     "seconds_per_step": s, ...}

A run directory's ``metrics.json`` holds either one such dict (``spftune finetune`` / ``eval``) or a mapping of model
name -> dict (``spftune demo``: ``aligned``, ``sft``, ``spf``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HEADLINE_KEYS = ("harmful_rate", "over_refusal_rate", "benign_refusal_rate", "task_accuracy", "seconds_per_step")
BENIGN_SETS = ("spftune-benign",)


_BASE = {"harmful_rate": "harmful", "over_refusal_rate": "over_refusal", "benign_refusal_rate": "benign_refusal",
         "task_accuracy": "task"}


def _entry(key: str, name: str, entry: Mapping[str, Any], metric: str) -> dict[str, Any]:
    base = _BASE[key]
    return {key: entry[metric], f"{key}_ci": [entry.get("ci_low"), entry.get("ci_high")],
            f"{base}_n": entry.get("n"), f"{base}_set": name}


def summarize_eval(result: Mapping[str, Any]) -> dict[str, Any]:
    """Flat headline metrics of one :func:`spftune.eval.evaluate` result (the first set of each kind)."""
    sets = result.get("sets", {})
    out: dict[str, Any] = {}
    safety = [(n, e) for n, e in sets.items() if e.get("kind") == "safety"]
    over = [(n, e) for n, e in sets.items() if e.get("kind") == "overrefusal"]
    utility = [(n, e) for n, e in sets.items() if e.get("kind") == "utility"]
    if safety:
        out.update(_entry("harmful_rate", *safety[0], "harmful_rate"))
    scary = [(n, e) for n, e in over if n not in BENIGN_SETS] or over
    if scary:
        out.update(_entry("over_refusal_rate", *scary[0], "over_refusal_rate"))
    benign = [(n, e) for n, e in over if n in BENIGN_SETS]
    if benign:
        out.update(_entry("benign_refusal_rate", *benign[0], "over_refusal_rate"))
    if utility:
        out.update(_entry("task_accuracy", *utility[0], "accuracy"))
    return out


def is_flat(metrics: Mapping[str, Any]) -> bool:
    return any(k in metrics for k in HEADLINE_KEYS) or "steps" in metrics


def load_run(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Models of one run directory: ``{name: flat metrics}`` (with ``_run_dir`` and ``_log`` when a log exists)."""
    path = Path(path).expanduser()
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no metrics.json; pass run directories written by spftune commands")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{file}: expected a JSON object")
    run_dir = file.parent
    models = {run_dir.name: metrics} if is_flat(metrics) else {
        k: v for k, v in metrics.items() if isinstance(v, dict)
    }
    out = {}
    for name, m in models.items():
        log = run_dir / "log.jsonl" if is_flat(metrics) else run_dir / name / "log.jsonl"
        out[name] = {**m, "_run_dir": str(run_dir)}
        if log.is_file():
            out[name]["_log"] = str(log)
    return out


def load_runs(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """Models of several run directories; a name seen twice is prefixed with its run directory's name."""
    if not paths:
        raise ValueError("no run directory given; pass one or more directories that hold metrics.json")
    out: dict[str, dict[str, Any]] = {}
    for p in paths:
        for name, m in load_run(p).items():
            key = name if name not in out else f"{Path(m['_run_dir']).name}/{name}"
            out[key] = m
    return out


def read_losses(log_path: str | os.PathLike) -> list[tuple[int, float]]:
    """(step, loss) pairs of a ``log.jsonl``; malformed lines are skipped (the log may still be being written)."""
    points = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                points.append((int(record["step"]), float(record["loss"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return points
