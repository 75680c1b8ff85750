"""The examples analyze reads: utility data (a task name or a file) and safety examples (harmful prompt + refusal).

Utility sources, tried in this order:

- a public reference set read from a data directory (``data_dir`` / ``--data-dir``, else ``$SPFTUNE_DATA``) and
  checked against its pinned SHA-256: ``gsm8k`` (``gsm8k/train.jsonl``, question -> worked answer) and ``sst2``
  (``sst2/train.tsv``, review -> ``positive``/``negative``);
- a registered training task (``spftune-synthetic``, ... see :func:`spftune.train.dataset.training_tasks`);
- a ``.jsonl`` / ``.json`` / ``.csv`` file of ``{prompt, response}`` or ``{"messages": [...]}`` records.

Safety examples default to the project's harmful *train* split (10 harm categories, one refusal each). The single
example SPF uses, unless told otherwise, is :data:`spftune.core.config.DEFAULT_SAFETY_EXAMPLE`.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spftune.core.chat import collate, encode_example, pad_token_id
from spftune.core.config import DEFAULT_SAFETY_EXAMPLE, SafetyExample


@dataclass(frozen=True)
class Demo:
    """One (prompt, response) pair; ``category`` only for safety examples that carry one."""

    prompt: str
    response: str
    category: str | None = None
    system: str | None = None


def _gsm8k(path: Path) -> list[Demo]:
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Demo(str(row["question"]), str(row["answer"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with 'question' and 'answer'") from None
    return out


def _sst2(path: Path) -> list[Demo]:
    from spftune.eval.utility_tasks import SST2_PROMPT

    labels = {"0": "negative", "1": "positive"}
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if lineno == 1 and row[:2] == ["sentence", "label"]:
                continue
            if len(row) != 2 or row[1].strip() not in labels:
                raise ValueError(f"{path}:{lineno}: expected 'sentence<TAB>0|1'")
            out.append(Demo(SST2_PROMPT.format(sentence=row[0].strip()), labels[row[1].strip()]))
    return out


# name -> (relative path under the data directory, SHA-256 of ../shared/data's copy, reader)
PUBLIC_UTILITY_SETS = {
    "gsm8k": ("gsm8k/train.jsonl", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", _gsm8k),
    "sst2": ("sst2/train.tsv", "920e317b2c52e12cd22db1da2c6708312bd7dc4f3712b9bbf1b50ee6c2c792ba", _sst2),
}


def utility_names() -> list[str]:
    from spftune.train.dataset import training_tasks

    return sorted(PUBLIC_UTILITY_SETS) + training_tasks()


def utility_kind(source: str | os.PathLike) -> str:
    """``"public"``, ``"task"`` or ``"file"`` for a utility source; ``ValueError`` naming it when it is none."""
    from spftune.train.dataset import training_tasks

    name = str(source)
    if name in PUBLIC_UTILITY_SETS:
        return "public"
    if name in training_tasks():
        return "task"
    if name.strip() and Path(name).expanduser().is_file():
        return "file"
    raise ValueError(
        f"utility {name!r} is neither a task ({', '.join(utility_names())}) nor an existing .jsonl/.json/.csv "
        "file; pass one of those"
    )


def load_utility(
    source: str | os.PathLike, *, n: int, seed: int = 0, data_dir: str | os.PathLike | None = None
) -> list[Demo]:
    """``n`` utility examples (a seeded random subset when the source has more) from a task name or a file."""
    from spftune.train.dataset import load_examples, read_examples

    name = str(source)
    kind = utility_kind(name)
    if kind == "public":
        from spftune.eval.datasets import DataSource, fetch, resolve_data_dir

        relpath, sha, reader = PUBLIC_UTILITY_SETS[name]
        demos = reader(fetch(DataSource(relpath, sha256=sha), resolve_data_dir(data_dir)))
    elif kind == "task":
        demos = [Demo(e["prompt"], e["response"], system=e.get("system")) for e in load_examples(name, limit=n, seed=seed)]
    else:
        demos = [Demo(e["prompt"], e["response"], system=e.get("system")) for e in read_examples(name)]
    if not demos:
        raise ValueError(f"utility {name!r} has no examples")
    if len(demos) > n:
        keep = sorted(random.Random(seed).sample(range(len(demos)), n))
        demos = [demos[i] for i in keep]
    return demos


def as_demo(item: Any, where: str) -> Demo:
    """A safety example from a :class:`SafetyExample`, a :class:`Demo` or a dict with prompt + refusal/response."""
    if isinstance(item, Demo):
        return item
    if isinstance(item, SafetyExample):
        return Demo(item.prompt, item.refusal)
    if isinstance(item, dict):
        prompt = item.get("prompt")
        response = item.get("refusal", item.get("response"))
        if isinstance(prompt, str) and isinstance(response, str) and prompt.strip() and response.strip():
            category = item.get("category")
            return Demo(prompt, response, category=str(category) if category is not None else None)
    raise ValueError(f"{where}: expected a dict with non-empty 'prompt' and 'refusal' (or 'response'), got {item!r:.80}")


def default_safety_examples() -> list[Demo]:
    """The harmful train split: 279 prompts over 10 categories, each with its refusal."""
    from spftune.data import load_prompts

    return [Demo(r["prompt"], r["refusal"], category=r["category"]) for r in load_prompts("harmful", "train")]


def read_safety_file(path: str | os.PathLike) -> list[Demo]:
    """Safety examples from a JSONL/JSON/CSV file of ``{prompt, refusal}`` rows; a ``category`` column is kept."""
    from spftune.train.dataset import read_examples

    path = Path(path).expanduser()
    examples = read_examples(path)
    categories: list[Any] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if len(rows) == len(examples):
            categories = [r.get("category") if isinstance(r, dict) else None for r in rows]
    categories = categories or [None] * len(examples)
    return [
        Demo(e["prompt"], e["response"], category=str(c) if c is not None else None)
        for e, c in zip(examples, categories)
    ]


def spf_demo(example: Any | None) -> Demo:
    """The single safety example of SPF (default: the filter's built-in one)."""
    return as_demo(DEFAULT_SAFETY_EXAMPLE if example is None else example, "spf_example")


def by_category(demos: Sequence[Demo]) -> dict[str, list[Demo]]:
    groups: dict[str, list[Demo]] = {}
    for d in demos:
        if d.category is not None:
            groups.setdefault(d.category, []).append(d)
    return groups


def round_robin(groups: dict[str, list[Demo]], n: int, skip_first: bool) -> list[Demo]:
    """``n`` examples taken from the groups in turn (categories mixed evenly), the first of each group skipped if
    ``skip_first`` (it is held out as that category's single example)."""
    queues = [list(g[1:] if skip_first else g) for g in groups.values()]
    out: list[Demo] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def encode_batch(tokenizer: Any, demos: Sequence[Demo], max_length: int, what: str) -> dict[str, torch.Tensor]:
    """Format with the chat template (loss on the response only) and right-pad into one batch."""
    if not demos:
        raise ValueError(f"no {what} examples to encode")
    encoded = []
    for i, d in enumerate(demos):
        try:
            encoded.append(encode_example(tokenizer, d.prompt, d.response, max_length, system=d.system))
        except ValueError as e:
            raise ValueError(f"{what} example {i}: {e}") from None
    return collate(encoded, pad_token_id(tokenizer))
