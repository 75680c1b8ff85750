"""Chat formatting of (prompt, response) pairs into token ids with the loss on response tokens only.

The tokenizer is duck-typed (anything with ``apply_chat_template`` / ``__call__`` / ``eos_token_id`` like a Hugging
Face tokenizer), so this module imports only torch. Training, evaluation and the SPF safety pass all format through
here, so the safety example is seen exactly as training data and prompts are seen at generation time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100

# Used when a tokenizer has no chat template. Documented in the README; plain and unambiguous for base models.
PLAIN_TEMPLATE_PROMPT = "### User:\n{prompt}\n\n### Assistant:\n"


def _as_id_list(encoded: Any) -> list[int]:
    """Normalize what ``apply_chat_template(..., tokenize=True)`` returns across transformers versions."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if isinstance(encoded, torch.Tensor):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):  # a batch of one
        encoded = encoded[0]
    return [int(t) for t in encoded]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    return msgs


def _plain_ids(tokenizer: Any, text: str, *, add_bos: bool) -> list[int]:
    ids = _as_id_list(tokenizer(text, add_special_tokens=False))
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if add_bos and bos is not None else []) + ids


def prompt_ids(tokenizer: Any, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a user turn followed by the generation prompt of the assistant turn."""
    if has_chat_template(tokenizer):
        return _as_id_list(
            tokenizer.apply_chat_template(_messages(prompt, system), add_generation_prompt=True, tokenize=True)
        )
    text = (system + "\n\n" if system else "") + PLAIN_TEMPLATE_PROMPT.format(prompt=prompt)
    return _plain_ids(tokenizer, text, add_bos=True)


def encode_example(
    tokenizer: Any, prompt: str, response: str, max_length: int, system: str | None = None
) -> dict[str, list[int]]:
    """Encode one chat exchange for supervised fine-tuning.

    Returns ``input_ids`` and ``labels`` (both length <= max_length) where ``labels`` is ``IGNORE_INDEX`` on the
    prompt and equals ``input_ids`` on the response, including the template's end-of-turn tokens, so the model
    learns to stop. Raises ``ValueError`` if the response is empty or truncated to nothing.
    """
    if not response or not response.strip():
        raise ValueError(f"empty response for prompt {prompt[:60]!r}; every example needs response text.")
    head = prompt_ids(tokenizer, prompt, system)
    full: list[int] | None = None
    if has_chat_template(tokenizer):
        msgs = _messages(prompt, system) + [{"role": "assistant", "content": response}]
        candidate = _as_id_list(tokenizer.apply_chat_template(msgs, tokenize=True))
        # Some templates render the history differently once an answer follows; then fall back to concatenation.
        if candidate[: len(head)] == head and len(candidate) > len(head):
            full = candidate
    if full is None:
        tail = _plain_ids(tokenizer, response, add_bos=False)
        eos = getattr(tokenizer, "eos_token_id", None)
        full = head + tail + ([eos] if eos is not None else [])
    full = full[:max_length]
    n_response = len(full) - len(head)
    if n_response <= 0:
        raise ValueError(
            f"the prompt {prompt[:60]!r} takes {len(head)} tokens, so max_length={max_length} leaves no room for the "
            "response; raise max_length or shorten the prompt."
        )
    labels = [IGNORE_INDEX] * len(head) + full[len(head):]
    return {"input_ids": full, "labels": labels}


def collate(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into ``input_ids``, ``attention_mask``, ``labels`` of shape (B, T)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_token_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def loss_window(labels: torch.Tensor) -> int:
    """How many final positions of a (B, T) batch the response loss needs logits for (0: all of them).

    The logit at position t predicts token t + 1, so the window starts one position before the earliest labelled
    token of the batch. Passing it as ``logits_to_keep`` lets a causal LM skip the (T, d) x (d, V) output head on
    prompt positions, which carry no loss.
    """
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if not labelled.numel() or int(labelled[0]) == 0:
        return 0
    return labels.shape[1] - int(labelled[0]) + 1


def response_loss(logits: torch.Tensor, labels: torch.Tensor, first_token_weight: float = 1.0) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions.

    logits: (B, T', V) for the last T' <= T positions (see :func:`loss_window`); labels: (B, T) with
    ``IGNORE_INDEX`` where no loss is taken. Computed in float32.

    ``first_token_weight`` w scales the loss of each row's first labelled token, the one where a chat model decides
    between answering and refusing: loss = (w * l_first + sum of the other l_t) / (number of labelled tokens), so
    w = 1 is the plain mean (and takes the plain path).
    """
    labels = labels[:, labels.shape[1] - logits.shape[1]:]
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    if first_token_weight == 1.0:
        return torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
    per_token = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, T'-1), 0 where ignored
    labelled = shift_labels != IGNORE_INDEX  # (B, T'-1)
    # first labelled position of each row: the first True of a cumulative count equal to 1
    first = labelled & (labelled.cumsum(dim=1) == 1)
    weights = torch.where(first, torch.full_like(per_token, first_token_weight), labelled.to(per_token.dtype))
    return (per_token * weights).sum() / labelled.sum().clamp(min=1)
