"""The alignment recipe on a tiny model: data assembly, caching by recipe hash, the run directory."""

from __future__ import annotations

import json

import pytest
from tiny_models import make_model, make_tokenizer

from spftune.train.align import AlignConfig, align, aligned_dir, trim_to_sentence


@pytest.fixture()
def tiny_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPFTUNE_HOME", str(tmp_path / "home"))
    path = tmp_path / "tiny"
    make_model("llama", seed=0).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def test_trim_to_sentence():
    assert trim_to_sentence("One sentence here. Two is cut") == "One sentence here."
    assert trim_to_sentence("Steps:\n1. Mix.\n2. Stir the") == "Steps:\n1. Mix."
    assert trim_to_sentence("no end at all") == "no end at all"
    assert trim_to_sentence("A short one. And then a much longer sentence that never ends because") == (
        "A short one. And then a much longer sentence that never ends because"
    )  # a cut that would drop most of the answer keeps it whole


def test_align_tiny_model_writes_run_and_is_cached(tiny_dir):
    from transformers import AutoModelForCausalLM

    cfg = AlignConfig(model=str(tiny_dir), refusals=4, benign=3, overrefusal=2, benign_repeats=3,
                      overrefusal_repeats=2, answer_tokens=6, epochs=1.0, batch_size=4, max_length=512)
    record = align(cfg, progress=False)
    assert record["cached"] is False
    data = record["data"]
    assert data["refusals"] == 4
    assert data["benign_answers"] + data["overrefusal_answers"] + data["dropped_refusing_answers"] == 5
    # each kept answer is repeated by its kind's factor
    assert record["train"]["examples"] == 4 + 3 * data["benign_answers"] + 2 * data["overrefusal_answers"]
    run = aligned_dir(cfg, str(tiny_dir))
    assert str(run).startswith(str(tiny_dir.parent / "home" / "aligned"))
    for name in ("config.yaml", "log.jsonl", "alignment.json", "checkpoint/model.safetensors"):
        assert (run / name).is_file(), name
    AutoModelForCausalLM.from_pretrained(run / "checkpoint")
    assert align(cfg, progress=False)["cached"] is True  # same recipe: nothing is trained again
    assert aligned_dir(AlignConfig(**{**cfg.__dict__, "lr": cfg.lr * 2}), str(tiny_dir)) != run  # recipe is in the key
    assert json.loads((run / "alignment.json").read_text())["checkpoint"] == record["checkpoint"]


def test_align_config_rejects_bad_values():
    with pytest.raises(ValueError, match="refusals"):
        AlignConfig(refusals=-2)
    with pytest.raises(ValueError, match="unknown option"):
        AlignConfig.from_dict({"refusal": 3})
    with pytest.raises(ValueError, match="first_token_weight must be a number >= 0, got -1"):
        AlignConfig(first_token_weight=-1)


def test_train_top_trains_only_the_top_blocks_and_restores_flags(tiny_dir):
    import torch
    from safetensors.torch import load_file

    from spftune.models import load_model_and_tokenizer
    from spftune.train.align import decoder_blocks, freeze_below_top

    model, tok = load_model_and_tokenizer(str(tiny_dir))
    n_blocks = len(decoder_blocks(model))
    assert n_blocks >= 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = AlignConfig(model=str(tiny_dir), out=str(tiny_dir.parent / "run"), refusals=4, benign=2, overrefusal=2,
                      answer_tokens=6, epochs=1.0, batch_size=4, max_length=512, train_top=0.5, lr=1e-2)
    record = align(cfg, model=model, tokenizer=tok, progress=False)
    assert all(p.requires_grad for p in model.parameters())  # the caller's flags are given back
    after = load_file(str(tiny_dir.parent / "run" / "checkpoint" / "model.safetensors"))
    n_top = max(1, round(0.5 * n_blocks))
    top = tuple(f"layers.{i}." for i in range(n_blocks - n_top, n_blocks))
    changed = {k for k, v in before.items() if k in after and not torch.equal(v, after[k])}
    assert changed and all(any(t in k for t in top) or k.endswith("model.norm.weight") for k in changed), changed
    assert any(top[0] in k for k in changed)
    assert record["data"]["trained_parameters"] < sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="train_top"):
        freeze_below_top(model, n_blocks + 1)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="train_top"):
            AlignConfig(train_top=bad)
