"""Batched generation for evaluation.

Prompts are rendered with :func:`spftune.core.chat.prompt_ids` (the same formatting as training), sorted by length
(longest first: similar lengths share a batch, so little padding, and the largest batch runs first, so an
out-of-memory error shows up at once), left-padded, generated greedily by default, and returned in the caller's
order. Only the new tokens are decoded, up to the first end-of-sequence token, without special tokens.

The model is duck-typed: anything with a Hugging Face style ``generate(input_ids=, attention_mask=,
generation_config=)`` that returns prompt + new token ids works, e.g. :class:`spftune.eval.dummy.DummyModel`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from spftune.core.chat import PLAIN_TEMPLATE_PROMPT, has_chat_template, pad_token_id, prompt_ids


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, recorded with every result."""

    max_new_tokens: int = 64
    batch_size: int = 32
    do_sample: bool = False  # greedy unless asked
    temperature: float = 1.0  # used only when sampling
    top_p: float = 1.0  # used only when sampling
    seed: int = 0
    system: str | None = None
    padding_side: str = "left"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chat_format_record(tokenizer: Any) -> dict[str, Any]:
    """How prompts were formatted: the chat template text and its SHA-256, or the plain fallback template."""
    if has_chat_template(tokenizer):
        template = tokenizer.chat_template
        if not isinstance(template, str):  # a dict of named templates
            template = repr(template)
        kind = "chat_template"
    else:
        template, kind = PLAIN_TEMPLATE_PROMPT, "plain"
    return {"format": kind, "template": template, "sha256": hashlib.sha256(template.encode()).hexdigest()}


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return ids


def _generation_config(model: Any, settings: GenerationSettings, pad_id: int, eos_ids: list[int]) -> Any:
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    config.max_new_tokens = settings.max_new_tokens
    config.max_length = None
    config.min_new_tokens = None
    config.min_length = 0
    config.do_sample = settings.do_sample
    config.num_beams = 1
    config.pad_token_id = pad_id
    config.eos_token_id = eos_ids or None
    # Neutral values when greedy, so that a model's sampling defaults neither apply nor warn.
    config.temperature = settings.temperature if settings.do_sample else 1.0
    config.top_p = settings.top_p if settings.do_sample else 1.0
    config.top_k = None if settings.do_sample else 50
    return config


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def generate_from_ids(
    model: Any,
    tokenizer: Any,
    id_lists: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    show_progress: bool = False,
    desc: str = "generating",
) -> list[str]:
    """Generate for already-tokenized prompts (see the module docstring); returns texts in input order."""
    if not id_lists:
        return []
    if any(len(ids) == 0 for ids in id_lists):
        raise ValueError("cannot generate from an empty prompt")
    pad_id = pad_token_id(tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    config = _generation_config(model, settings, pad_id, eos_ids)
    device = _device(model)
    order = sorted(range(len(id_lists)), key=lambda i: -len(id_lists[i]))
    batches = [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    texts: list[str | None] = [None] * len(id_lists)

    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(id_lists), desc=desc, unit="prompt")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    torch.manual_seed(settings.seed)
    try:
        with torch.inference_mode():
            for batch in batches:
                width = max(len(id_lists[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
                for row, i in enumerate(batch):
                    n = len(id_lists[i])
                    input_ids[row, width - n :] = torch.tensor(list(id_lists[i]), dtype=torch.long)
                    attention_mask[row, width - n :] = 1
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
                new_tokens = output[:, width:].tolist()  # (B, <= max_new_tokens)
                for row, i in enumerate(batch):
                    tokens = new_tokens[row]
                    cut = next((k for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
                    texts[i] = tokenizer.decode(tokens[:cut], skip_special_tokens=True)
                if progress is not None:
                    progress.update(len(batch))
    finally:
        if progress is not None:
            progress.close()
        if was_training and hasattr(model, "train"):
            model.train()
    return [t if t is not None else "" for t in texts]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    system: str | None = None,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    show_progress: bool = False,
) -> list[str]:
    """Responses of ``model`` to each prompt (one user turn), in the order of ``prompts``."""
    settings = GenerationSettings(max_new_tokens, batch_size, do_sample, temperature, top_p, seed, system)
    return generate_with_settings(model, tokenizer, prompts, settings, show_progress=show_progress)


def generate_with_settings(
    model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings, *, show_progress: bool = False
) -> list[str]:
    """:func:`generate` with a :class:`GenerationSettings` object."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    ids = [prompt_ids(tokenizer, p, settings.system) for p in prompts]
    return generate_from_ids(model, tokenizer, ids, settings, show_progress=show_progress)
