"""Training examples: read them from files or registered tasks, and mix a fraction of attack examples in.

An example is a dict ``{"prompt": str, "response": str}`` with optional ``"system"`` and ``"source"`` (``"task"`` or
``"attack"``). Formatting into tokens happens later, in :func:`spftune.core.chat.encode_example`.

Accepted files
    ``.jsonl``: one JSON object per line, either ``{"messages": [{"role", "content"}, ...]}`` (the last assistant
    turn is the response, the user turn before it the prompt, a system turn is kept; earlier turns are dropped) or
    ``{"prompt", "response"}`` (also ``completion``/``output`` for the response, ``instruction`` + ``input`` for the
    prompt, the Alpaca format). ``.json``: a list of such objects. ``.csv``: ``prompt`` and ``response`` columns.
A malformed line or record raises ``ValueError`` naming the file and line; rows with an empty prompt or response are
skipped; a file with no usable row raises ``ValueError``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

Example = dict[str, str]
FORMATS_HINT = (
    "each record needs 'messages' (chat turns with a final assistant turn) or 'prompt' and 'response' "
    "('instruction'/'output' also work)"
)

_TASKS: dict[str, Callable[[int | None, int], list[Example]]] = {}


def register_training_task(name: str) -> Callable:
    """Register ``fn(limit, seed) -> examples`` so that ``--data NAME`` reads it."""

    def deco(fn: Callable[[int | None, int], list[Example]]) -> Callable:
        if name in _TASKS:
            raise ValueError(f"training task {name!r} is already registered")
        _TASKS[name] = fn
        return fn

    return deco


def training_tasks() -> list[str]:
    return sorted(_TASKS)


@register_training_task("spftune-synthetic")
def _synthetic(limit: int | None, seed: int) -> list[Example]:
    from spftune.data import synthetic_task

    return [{"prompt": e["prompt"], "response": e["response"]} for e in synthetic_task(limit or 1000, seed=seed)]


@register_training_task("spftune-attack")
def _attack(limit: int | None, seed: int) -> list[Example]:
    from spftune.data import attack_examples

    return [{"prompt": e["prompt"], "response": e["response"]} for e in attack_examples(limit, seed=seed)]


@register_training_task("spftune-refusals")
def _refusals(limit: int | None, seed: int) -> list[Example]:
    from spftune.data import load_prompts

    rows = [{"prompt": r["prompt"], "response": r["refusal"]} for r in load_prompts("harmful", "train")]
    return rows[:limit] if limit else rows


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def record_to_example(record: Any, where: str) -> Example | None:
    """One example from a parsed record; None when it has the right shape but empty text; ValueError otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}; {FORMATS_HINT}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError(f"{where}: 'messages' must be a list of {{'role', 'content'}} objects")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        user = max((i for i, m in enumerate(messages[: last or 0]) if m["role"] == "user"), default=None)
        if last is None or user is None:
            raise ValueError(f"{where}: 'messages' needs a user turn followed by an assistant turn")
        example = {"prompt": messages[user]["content"], "response": messages[last]["content"]}
        system = next((m["content"] for m in messages[:user] if m["role"] == "system"), None)
        if system:
            example["system"] = system
    else:
        prompt = _text(record.get("prompt"))
        if prompt is None and _text(record.get("instruction")) is not None:
            extra = _text(record.get("input")) or ""
            prompt = record["instruction"] + ("\n\n" + extra if extra.strip() else "")
        response = next((_text(record.get(k)) for k in ("response", "completion", "output", "refusal") if k in record), None)
        if prompt is None or response is None:
            raise ValueError(f"{where}: found keys {sorted(record)[:8]}; {FORMATS_HINT}")
        example = {"prompt": prompt, "response": response}
        if _text(record.get("system")):
            example["system"] = record["system"]
    if not example["prompt"].strip() or not example["response"].strip():
        return None
    return example


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Examples from a ``.jsonl``, ``.json`` or ``.csv`` file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {path} not found; pass a .jsonl/.json/.csv file or a task name ({', '.join(training_tasks())})"
        )
    suffix = path.suffix.lower()
    out: list[Example] = []
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            try:
                for lineno, row in enumerate(reader, start=2):
                    example = record_to_example(row, f"{path}:{lineno}")
                    if example is not None:
                        out.append(example)
            except csv.Error as e:
                raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    elif suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json dataset is one list of records") from None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records; {FORMATS_HINT}")
        for i, record in enumerate(records):
            example = record_to_example(record, f"{path}: record {i}")
            if example is not None:
                out.append(example)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object"
                    ) from None
                example = record_to_example(record, f"{path}:{lineno}")
                if example is not None:
                    out.append(example)
    else:
        raise ValueError(f"dataset {path}: unknown extension {suffix!r}; use .jsonl, .json or .csv")
    if not out:
        raise ValueError(f"dataset {path} has no usable rows (every prompt or response is empty); {FORMATS_HINT}")
    return out


def load_examples(source: str | os.PathLike, *, limit: int | None = None, seed: int = 0) -> list[Example]:
    """Examples from a registered task name or a file; at most ``limit`` (a seeded random subset, order kept)."""
    name = str(source)
    if name in _TASKS:
        examples = _TASKS[name](limit, seed)
        if not examples:
            raise ValueError(f"training task {name!r} returned no examples")
    else:
        examples = read_examples(source)
    if limit is not None and len(examples) > limit:
        keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
        examples = [examples[i] for i in keep]
    return [{**e, "source": e.get("source", "task")} for e in examples]


def attack_count(n_total: int, fraction: float) -> int:
    """How many of ``n_total`` examples are attack examples at share ``fraction``: ``p * N`` rounded half up."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"harmful_fraction must be in [0, 1], got {fraction!r}")
    return int(math.floor(fraction * n_total + 0.5))


def mix_harmful(
    task: list[Example], attack: list[Example], fraction: float, *, seed: int = 0
) -> list[Example]:
    """A shuffled mix of ``len(task)`` examples of which exactly ``attack_count(len(task), fraction)`` are
    attack ones (``p * N`` rounded half up).

    The total stays the size of the task data, so runs at different fractions take the same number of steps (the
    harmful-fine-tuning literature's convention). Attack examples are drawn without replacement while they last,
    then reused in a new shuffled order. Every example carries ``source`` = ``"task"`` or ``"attack"``.
    """
    n_total = len(task)
    n_attack = attack_count(n_total, fraction)
    if n_attack and not attack:
        raise ValueError("harmful_fraction > 0 but the attack data is empty; pass --attack-data with examples")
    rng = random.Random(seed)
    kept = [{**e, "source": "task"} for e in rng.sample(task, n_total - n_attack)]
    drawn: list[Example] = []
    while len(drawn) < n_attack:
        drawn.extend(rng.sample(attack, len(attack)))
    mixed = kept + [{**e, "source": "attack"} for e in drawn[:n_attack]]
    rng.shuffle(mixed)
    return mixed


def build_training_examples(
    data: str | os.PathLike,
    *,
    limit: int | None = None,
    harmful_fraction: float = 0.0,
    attack_data: str | os.PathLike | None = None,
    seed: int = 0,
) -> list[Example]:
    """Task examples from ``data`` with ``harmful_fraction`` of them replaced by attack examples."""
    task = load_examples(data, limit=limit, seed=seed)
    if harmful_fraction <= 0:
        return task
    if attack_data is None:
        attack = load_examples("spftune-attack", seed=seed)
    else:
        attack = load_examples(attack_data, seed=seed)
    return mix_harmful(task, attack, harmful_fraction, seed=seed)
