"""Tiny random models and an offline character tokenizer, built from configs in milliseconds."""

from __future__ import annotations

import string

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"]
CHARS = list(string.printable)
VOCAB = SPECIALS + CHARS

FAMILIES = ("llama", "qwen2", "gemma3")


def make_tokenizer(chat_template: bool = True):
    """A character-level fast tokenizer with a ChatML template; no files, no network."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", additional_special_tokens=SPECIALS[2:]
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(family: str = "llama", *, lora: bool = False, seed: int = 0, vocab_size: int = len(VOCAB)):
    """A 2-layer random causal LM of the given family (float32), optionally wrapped with PEFT LoRA (r=4)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False))
    elif family == "qwen2":  # q/k/v projections carry biases
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=False))
    elif family == "gemma3":  # tied input/output embeddings, scaled embedding module
        model = tf.Gemma3ForCausalLM(
            tf.Gemma3TextConfig(**common, head_dim=8, tie_word_embeddings=True, sliding_window=64)
        )
    elif family == "llama-tied":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=True))
    else:
        raise ValueError(family)
    model.float()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", bias="none")
        )
    return model


def random_grads_(model, seed: int = 1) -> None:
    """Give every trainable tensor a random gradient (a stand-in for a fine-tuning gradient)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
