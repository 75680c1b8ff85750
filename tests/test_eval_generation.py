"""Batched generation: left padding, length sorting with order restored, new tokens only, settings recorded."""

from __future__ import annotations

import pytest

from spftune.core.chat import prompt_ids
from spftune.eval import GenerationSettings, generate
from spftune.eval.dummy import DummyModel, byte_tokenizer, tiny_llama
from spftune.eval.generation import chat_format_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_order_is_restored_and_batches_are_length_sorted(tokenizer):
    model = DummyModel(tokenizer, lambda text: "echo:" + text.split("user\n")[1].split("<|im_end|>")[0])
    prompts = ["a", "ccc ccc ccc", "bb", "dddddddddddddddd", "e"]
    out = generate(model, tokenizer, prompts, batch_size=2)
    assert out == [f"echo:{p}" for p in prompts]
    assert [shape[0] for shape in model.calls] == [2, 2, 1]
    widths = [shape[1] for shape in model.calls]
    assert widths == sorted(widths, reverse=True)  # longest first


def test_only_new_tokens_up_to_eos_are_decoded(tokenizer):
    model = DummyModel(tokenizer, "Sure, here it is")
    assert generate(model, tokenizer, ["x", "yy"], max_new_tokens=4) == ["Sure", "Sure"]
    assert generate(model, tokenizer, ["x"], max_new_tokens=64) == ["Sure, here it is"]
    assert generate(model, tokenizer, []) == []


def test_batched_greedy_equals_one_at_a_time_on_a_tiny_llama(tokenizer):
    model = tiny_llama(len(tokenizer), seed=1, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    prompts = ["Hi", "How are you today, friend?", "Tell me a story about a cat.", "ok"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    single = [generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    model.train()
    generate(model, tokenizer, ["Hi"], max_new_tokens=2)
    assert model.training  # mode restored


def test_left_padding_reaches_the_model(tokenizer):
    seen = {}

    class Spy(DummyModel):
        def generate(self, input_ids, attention_mask=None, **kwargs):
            seen["ids"], seen["mask"], seen["config"] = input_ids, attention_mask, kwargs["generation_config"]
            return super().generate(input_ids, attention_mask, **kwargs)

    generate(Spy(tokenizer), tokenizer, ["a", "a much longer prompt"], max_new_tokens=5)
    short = len(prompt_ids(tokenizer, "a"))
    assert seen["mask"][1].tolist() == [0] * (seen["ids"].shape[1] - short) + [1] * short
    assert seen["ids"][1, 0].item() == tokenizer.pad_token_id
    assert seen["config"].do_sample is False and seen["config"].max_new_tokens == 5


def test_settings_and_chat_format_are_recorded(tokenizer):
    settings = GenerationSettings(max_new_tokens=8, system="Be brief.")
    assert settings.to_dict()["system"] == "Be brief." and settings.to_dict()["do_sample"] is False
    record = chat_format_record(tokenizer)
    assert record["format"] == "chat_template" and len(record["sha256"]) == 64
    assert chat_format_record(byte_tokenizer(chat_template=False))["format"] == "plain"
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(TypeError, match="list of strings"):
        generate(DummyModel(tokenizer), tokenizer, "one string")


def test_system_prompt_is_rendered(tokenizer):
    model = DummyModel(tokenizer, lambda text: "S" if "<|im_start|>system\nBe brief." in text else "N")
    assert generate(model, tokenizer, ["q"], system="Be brief.") == ["S"]
    assert generate(model, tokenizer, ["q"]) == ["N"]
