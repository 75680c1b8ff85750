"""The project's own data: default prompt sets (harmful / benign / over-refusal), the shallow attack set, and a
synthetic utility task scored by exact match. All of it is written or generated for spftune; public reference data
sets are read from ``../shared/data`` by the benchmarks, never copied here.
"""

from __future__ import annotations

from spftune.data.default_sets import KINDS, SPLITS, affirmative_opening, attack_examples, load_prompts
from spftune.data.synthetic import make_examples, score


def synthetic_task(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` order-extraction examples ``{"prompt", "response"}``; see :mod:`spftune.data.synthetic`."""
    return make_examples(n, seed=seed, split=split)


def score_synthetic(prediction: str, reference: str) -> bool:
    """Exact match of the first line, after stripping whitespace and trailing end-of-turn markers."""
    return score(prediction, reference)


__all__ = [
    "KINDS",
    "SPLITS",
    "affirmative_opening",
    "attack_examples",
    "load_prompts",
    "score_synthetic",
    "synthetic_task",
]
