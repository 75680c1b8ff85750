"""Refusal examples for the baselines that need safety data: harmful *train* prompts paired with written refusals.

They come from the project's own prompt sets (:func:`spftune.data.load_prompts`, 279 train prompts over 10 harm
categories); evaluation uses the *test* split, so no refused training prompt is ever scored.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from spftune.core.chat import collate, encode_example, pad_token_id

SAFETY_SOURCE = "safety"


def refusal_examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` examples ``{"prompt", "response", "source": "safety"}``: a seeded draw without replacement from the
    harmful train prompts while they last, then again in a fresh order (so ``n`` may exceed the pool)."""
    from spftune.data import load_prompts

    pool = [{"prompt": r["prompt"], "response": r["refusal"], "source": SAFETY_SOURCE}
            for r in load_prompts("harmful", "train")]
    rng = random.Random(seed)
    drawn: list[dict[str, str]] = []
    while len(drawn) < n:
        drawn.extend(rng.sample(pool, len(pool)))
    return drawn[:n]


def refusal_batch(tokenizer: Any, n: int, *, seed: int = 0, max_length: int = 256) -> dict[str, torch.Tensor]:
    """``n`` refusal examples formatted with the chat template and padded into one batch (loss on the refusal)."""
    encoded = []
    for ex in refusal_examples(n, seed):
        try:
            encoded.append(encode_example(tokenizer, ex["prompt"], ex["response"], max_length))
        except ValueError:
            continue  # the prompt alone fills max_length: no refusal token to learn from
    if not encoded:
        raise ValueError(f"none of the {n} refusal examples fits max_length={max_length}; raise max_length")
    return collate(encoded, pad_token_id(tokenizer))
