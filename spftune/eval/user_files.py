"""User files as tasks: ``file:PATH`` (a prompt set) and ``jsonl:PATH`` (a utility task with references).

``file:PATH`` reads JSONL (one object per line), JSON (a list of objects) or CSV/TSV (a header row); each record
needs a non-empty ``prompt``; ``category`` is optional. Its kind (harmful or benign prompts) is the list it is
passed in: ``safety=["file:x.jsonl"]`` or ``overrefusal=["file:x.jsonl"]``.

``jsonl:PATH`` reads JSONL records with ``prompt`` and ``reference``; a prediction is correct when it equals the
reference after trimming, collapsing whitespace and ignoring case (see :func:`normalized_match`).

A malformed record raises a ``ValueError`` that names the file and line.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from spftune.eval.datasets import LoadContext, sha256_file
from spftune.eval.tasks import Example, Task, register_task_prefix


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` pairs of a JSONL, JSON or CSV/TSV file."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist; pass an existing JSONL or CSV file")
    suffix = path.suffix.lower()
    out: list[tuple[int, dict[str, Any]]] = []
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None:
                raise ValueError(f"{path}: empty file; it needs a header row with a 'prompt' column")
            for row in reader:
                if None in row:
                    raise ValueError(f"{path}:{reader.line_num}: more fields than header columns; quote fields with commas")
                out.append((reader.line_num, row))
        return out
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects with a 'prompt' field")
        return [(i + 1, r) for i, r in enumerate(data)]
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object with a 'prompt' field"
                ) from None
    return out


def _text_field(path: Path, lineno: int, record: Any, key: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{lineno}: expected an object with a '{key}' field, got {type(record).__name__}")
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}:{lineno}: missing or empty '{key}' field")
    return value


def read_prompt_file(path: str | Path) -> list[Example]:
    """Examples of a user prompt file (see the module docstring). Raises on a malformed record or no rows."""
    path = Path(path).expanduser()
    examples = []
    for lineno, record in _records(path):
        prompt = _text_field(path, lineno, record, "prompt")
        category = record.get("category") or None
        examples.append(Example(prompt, category=str(category) if category is not None else None))
    if not examples:
        raise ValueError(f"{path}: no usable rows; it needs records with a non-empty 'prompt'")
    return examples


def read_reference_file(path: str | Path) -> list[Example]:
    """Examples of a user utility file: records with ``prompt`` and ``reference``."""
    path = Path(path).expanduser()
    examples = []
    for lineno, record in _records(path):
        prompt = _text_field(path, lineno, record, "prompt")
        reference = record.get("reference") if isinstance(record, dict) else None
        if reference is None or (isinstance(reference, str) and not reference.strip()):
            raise ValueError(f"{path}:{lineno}: missing or empty 'reference' field")
        examples.append(Example(prompt, category=record.get("category") or None, reference=str(reference)))
    if not examples:
        raise ValueError(f"{path}: no usable rows; it needs records with 'prompt' and 'reference'")
    return examples


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def normalized_match(prediction: str, reference: str) -> bool:
    """Exact match after trimming, collapsing whitespace and case-folding."""
    return normalize_answer(prediction) == normalize_answer(reference)


def _with_provenance(path: Path, reader):
    def load(ctx: LoadContext) -> list[Example]:
        examples = reader(path)
        ctx.files.append({"relpath": path.name, "path": str(path.resolve()), "sha256": sha256_file(path)})
        return examples

    return load


@register_task_prefix("file")
def file_task(argument: str, kind: str | None) -> Task:
    if kind == "utility":
        raise ValueError(f"file:{argument} holds prompts without answers; for a utility task use jsonl:{argument}")
    path = Path(argument).expanduser()
    return Task(f"file:{argument}", kind or "safety", _with_provenance(path, read_prompt_file), f"prompts from {path}")


@register_task_prefix("jsonl")
def jsonl_task(argument: str, kind: str | None) -> Task:
    if kind not in (None, "utility"):
        raise ValueError(f"jsonl:{argument} is a utility task (prompt + reference); for a prompt set use file:{argument}")
    path = Path(argument).expanduser()
    return Task(
        f"jsonl:{argument}",
        "utility",
        _with_provenance(path, read_reference_file),
        f"prompt/reference pairs from {path} (normalized exact match)",
        scorer=normalized_match,
    )
