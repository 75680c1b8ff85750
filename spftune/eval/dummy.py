"""Stand-ins for a real model, so the whole evaluation pipeline runs offline in well under a second.

- :func:`byte_tokenizer`: a byte-level tokenizer built in memory (no download), with ChatML special tokens and a
  ChatML chat template; every UTF-8 byte is one token, so decoding round-trips any text exactly.
- :class:`DummyModel`: a Hugging-Face-``generate``-compatible model that answers with fixed texts chosen from the
  prompt (lm-evaluation-harness's ``DummyLM`` idea). It sees the rendered prompt, so it exercises left padding,
  length sorting and new-token decoding of :func:`spftune.eval.generation.generate`.
- :func:`tiny_llama`: a randomly initialised 2-layer Llama for plumbing tests on real generation code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(*, chat_template: bool = True) -> Any:
    """A byte-level BPE tokenizer without merges: 3 special tokens (pad/bos/eos) + 256 byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


Responder = Callable[[str], str] | Mapping[str, str] | str


class DummyModel:
    """Answers each prompt with a fixed text.

    ``respond`` is a function of the decoded prompt text (template included), a mapping from substrings to answers
    (first substring found in the prompt wins; ``default`` otherwise), or one string for every prompt.
    ``calls`` records the batch shapes passed to ``generate``.
    """

    def __init__(self, tokenizer: Any, respond: Responder = "OK", default: str = "OK") -> None:
        self.tokenizer = tokenizer
        self.respond = respond
        self.default = default
        self.training = False
        self.device = torch.device("cpu")
        self.calls: list[tuple[int, int]] = []
        self.config = type("DummyConfig", (), {"_name_or_path": "dummy"})()
        self.generation_config = None

    def eval(self) -> DummyModel:
        self.training = False
        return self

    def train(self, mode: bool = True) -> DummyModel:
        self.training = mode
        return self

    def answer(self, prompt_text: str) -> str:
        if callable(self.respond):
            return self.respond(prompt_text)
        if isinstance(self.respond, str):
            return self.respond
        return next((a for key, a in self.respond.items() if key in prompt_text), self.default)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 generation_config: Any = None, max_new_tokens: int | None = None, **_: Any) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        limit = max_new_tokens or getattr(generation_config, "max_new_tokens", None) or 64
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        self.calls.append(tuple(input_ids.shape))
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            if mask[-1] != 1:
                raise AssertionError("DummyModel expects left padding (the last position must be a real token)")
            prompt = self.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
            new = self.tokenizer(self.answer(prompt), add_special_tokens=False)["input_ids"] + [eos]
            rows.append(new[:limit])
        width = max(len(r) for r in rows)
        new_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        return torch.cat([input_ids, new_ids], dim=1)


def tiny_llama(vocab_size: int, *, seed: int = 0, hidden_size: int = 32, num_hidden_layers: int = 2,
               pad_token_id: int | None = None, eos_token_id: int | None = None, bos_token_id: int | None = None) -> Any:
    """A randomly initialised small ``LlamaForCausalLM`` (float32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
