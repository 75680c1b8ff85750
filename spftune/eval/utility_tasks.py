"""Utility tasks: the model's answer is scored against a reference.

- ``sst2``: GLUE SST-2 sentiment (the shared copy's held-out slice ``dev.tsv``); correct when the first word of the
  answer is the label (``positive`` / ``negative``).
- ``agnews``: AG News topic (``test.tsv``); correct when the first word names the topic (``World``, ``Sports``,
  ``Business``, ``Sci/Tech``; ``science``/``technology``/``tech`` count as Sci/Tech).
- ``gsm8k``: grade-school math (``test.jsonl``); the reference is the number after ``####``; the prediction is the
  number after ``####`` if the answer has one, else the last number in it; compared as exact decimals.
- ``spftune-synthetic``: the project's generated task, scored by ``spftune.data.score_synthetic``.
"""

from __future__ import annotations

import csv
import json
import re
from decimal import Decimal, InvalidOperation

from spftune.eval.datasets import DataSource, LoadContext
from spftune.eval.tasks import Example, register_task

_ALPS = "https://raw.githubusercontent.com/forest-snow/alps/3c7ef2c98249fc975a897b27f275695f97d5b7a9"
SST2_DEV = DataSource(
    "sst2/dev.tsv", f"{_ALPS}/data/SST-2/dev.tsv",
    "92353770071a2a889f75d000a38a9e541ea8f0a5499e50f040b17917a5cbf66f", "GLUE research terms",
)
AGNEWS_TEST = DataSource(
    "agnews/test.tsv", f"{_ALPS}/data/agnews/test.tsv",
    "e4217edd939f618f24a42b0988c56ec3cddf656d8dc279b9afa443dd1ab6a1c1", "non-commercial research",
)
GSM8K_TEST = DataSource(
    "gsm8k/test.jsonl",
    "https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/"
    "grade_school_math/data/test.jsonl",
    "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", "MIT",
)

SST2_PROMPT = (
    "Is the sentiment of the following movie review positive or negative? Answer with one word: positive or "
    "negative.\n\nReview: {sentence}"
)
AGNEWS_PROMPT = (
    "Classify the topic of the following news article as World, Sports, Business or Sci/Tech. Answer with the topic "
    "only.\n\nArticle: {text}"
)
GSM8K_PROMPT = "{question}\nSolve the problem step by step, then give the final answer as a number after '####'."

_FIRST_WORD = re.compile(r"[A-Za-z][A-Za-z/\-]*")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def first_word(text: str) -> str:
    """The first alphabetic word of ``text``, lower-cased (slashes and hyphens kept: ``Sci/Tech``)."""
    match = _FIRST_WORD.search(text)
    return match.group(0).lower() if match else ""


def score_sst2(prediction: str, reference: str) -> bool:
    return first_word(prediction) == reference


AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
_AGNEWS_ALIASES = {
    "world": "World", "sports": "Sports", "sport": "Sports", "business": "Business", "sci/tech": "Sci/Tech",
    "sci-tech": "Sci/Tech", "science": "Sci/Tech", "technology": "Sci/Tech", "tech": "Sci/Tech",
    "science/technology": "Sci/Tech",
}


def score_agnews(prediction: str, reference: str) -> bool:
    return _AGNEWS_ALIASES.get(first_word(prediction)) == reference


def _to_decimal(text: str) -> Decimal | None:
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def extract_final_number(text: str) -> Decimal | None:
    """The number after the last ``####`` if there is one, else the last number in ``text``."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        match = _NUMBER.search(tail)
        if match:
            return _to_decimal(match.group(0))
    numbers = _NUMBER.findall(text)
    return _to_decimal(numbers[-1]) if numbers else None


def score_gsm8k(prediction: str, reference: str) -> bool:
    predicted, expected = extract_final_number(prediction), _to_decimal(reference)
    return predicted is not None and expected is not None and predicted == expected


def _read_tsv(path, columns: tuple[str, str], header: bool) -> list[tuple[int, str, str]]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(reader, start=1):
            if header and lineno == 1:
                if tuple(c.strip() for c in row[:2]) != columns:
                    raise ValueError(f"{path}:1: expected a header {columns}, got {row[:2]}")
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated fields, got {len(row)}")
            rows.append((lineno, row[0].strip(), row[1].strip()))
    return rows


@register_task("sst2", kind="utility", scorer=score_sst2, sources=[SST2_DEV])
def load_sst2(ctx: LoadContext) -> list[Example]:
    """SST-2 sentiment (6,735 held-out sentences; use a limit), first word of the answer = label."""
    path = ctx.path(SST2_DEV)
    labels = {"0": "negative", "1": "positive"}
    out = []
    for lineno, sentence, label in _read_tsv(path, ("sentence", "label"), header=True):
        if label not in labels:
            raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {label!r}")
        out.append(Example(SST2_PROMPT.format(sentence=sentence), category=labels[label], reference=labels[label]))
    return out


@register_task("agnews", kind="utility", scorer=score_agnews, sources=[AGNEWS_TEST])
def load_agnews(ctx: LoadContext) -> list[Example]:
    """AG News topic classification (7,600 test articles; use a limit), first word of the answer = topic."""
    path = ctx.path(AGNEWS_TEST)
    out = []
    for lineno, text, label in _read_tsv(path, ("text", "label"), header=False):
        if label not in AGNEWS_LABELS:
            raise ValueError(f"{path}:{lineno}: label must be one of {AGNEWS_LABELS}, got {label!r}")
        out.append(Example(AGNEWS_PROMPT.format(text=text), category=label, reference=label))
    return out


@register_task("gsm8k", kind="utility", scorer=score_gsm8k, sources=[GSM8K_TEST])
def load_gsm8k(ctx: LoadContext) -> list[Example]:
    """GSM8K test (1,319), exact match of the final number (reference: after '####')."""
    path = ctx.path(GSM8K_TEST)
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answer = row["answer"].rsplit("####", 1)[1].strip()
                question = row["question"]
            except (json.JSONDecodeError, KeyError, IndexError, AttributeError):
                raise ValueError(f"{path}:{lineno}: expected {{question, answer}} with '#### N' in the answer") from None
            out.append(Example(GSM8K_PROMPT.format(question=question), reference=answer.replace(",", "")))
    return out


@register_task("spftune-synthetic", kind="utility", scorer=lambda p, r: _score_synthetic(p, r))
def load_spftune_synthetic(ctx: LoadContext) -> list[Example]:
    """The project's generated utility task (test split, 200 items, seed 0), scored by exact match."""
    try:
        from spftune.data import synthetic_task
    except ImportError as e:
        raise RuntimeError(f"spftune.data.synthetic_task is not available ({e}); reinstall spftune") from None
    out = []
    for item in synthetic_task(200, 0, split="test"):
        reference = next((item[k] for k in ("reference", "response", "answer", "target") if k in item), None)
        out.append(Example(item["prompt"], category=item.get("category"), reference=reference))
    return out


def _score_synthetic(prediction: str, reference: str) -> bool:
    from spftune.data import score_synthetic

    return bool(score_synthetic(prediction, reference))
