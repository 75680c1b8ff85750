"""The training loop, methods registry, data loading and mixing (tiny random models, seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import make_model, make_tokenizer

from spftune.train import (
    TrainConfig,
    attack_count,
    available_methods,
    build_training_examples,
    load_examples,
    make_method,
    mix_harmful,
    read_examples,
    register_method,
    train,
)


def _examples(n: int = 12) -> list[dict[str, str]]:
    return [{"prompt": f"say {i}", "response": f"number {i} ok"} for i in range(n)]


# ---------------------------------------------------------------- mixing


@pytest.mark.parametrize("n", [1, 7, 10, 97, 320])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.1, 0.15, 0.2, 0.5, 1.0])
def test_mix_harmful_share_is_exact(n, p):
    task = [{"prompt": f"t{i}", "response": "r"} for i in range(n)]
    attack = [{"prompt": f"a{i}", "response": "s"} for i in range(13)]  # fewer than needed at large n: reused
    mixed = mix_harmful(task, attack, p, seed=3)
    n_attack = sum(e["source"] == "attack" for e in mixed)
    assert len(mixed) == n
    assert n_attack == attack_count(n, p) == math.floor(p * n + 0.5)  # p * N rounded half up
    assert abs(n_attack / n - p) <= 0.5 / n + 1e-12
    assert {e["prompt"] for e in mixed if e["source"] == "attack"} <= {e["prompt"] for e in attack}
    assert len({e["prompt"] for e in mixed if e["source"] == "task"}) == n - n_attack  # no task example twice


def test_mix_harmful_is_seeded_and_shuffled():
    task, attack = _examples(50), [{"prompt": f"a{i}", "response": "s"} for i in range(20)]
    a, b = mix_harmful(task, attack, 0.2, seed=1), mix_harmful(task, attack, 0.2, seed=1)
    assert a == b
    assert [e["source"] for e in a] != sorted(e["source"] for e in a)  # attack rows are spread, not appended


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_harmful_fraction_outside_unit_interval_is_rejected(p):
    with pytest.raises(ValueError, match="harmful_fraction"):
        TrainConfig(harmful_fraction=p)


def test_build_training_examples_with_builtin_attack_and_task():
    mixed = build_training_examples("spftune-synthetic", limit=40, harmful_fraction=0.15, seed=0)
    assert len(mixed) == 40 and sum(e["source"] == "attack" for e in mixed) == 6


# ---------------------------------------------------------------- reading files


def test_read_examples_formats(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}]}) + "\n\n"
        + json.dumps({"prompt": "p", "response": "r"}) + "\n"
    )
    assert read_examples(chat) == [{"prompt": "hi", "response": "hello", "system": "be brief"},
                                   {"prompt": "p", "response": "r"}]
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "do", "input": "x", "output": "done"}]))
    assert read_examples(alpaca) == [{"prompt": "do\n\nx", "response": "done"}]
    table = tmp_path / "t.csv"
    table.write_text('prompt,response\n"a, b",c\n,skipped\n')
    assert read_examples(table) == [{"prompt": "a, b", "response": "c"}]


def test_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_examples(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"wrong\.jsonl:1: .*'messages'"):
        read_examples(wrong)


def test_no_usable_rows_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "p", "response": "  "}) + "\n")
    with pytest.raises(ValueError, match="no usable rows"):
        read_examples(empty)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- the loop


class Recorder:
    """A method that records the gradient it sees in ``after_backward`` (a probe of the loop's hook order)."""

    name = "recorder"

    def __init__(self, scale: float = 1.0):
        self.scale, self.grads, self.calls, self.norms = scale, [], 0, []

    def after_backward(self, model, step):
        self.calls += 1
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        self.grads.append(grads)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(self.scale)
        self.norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                                               if p.grad is not None])))
        return {"recorded": True}


def test_gradient_accumulation_equals_the_full_batch_and_hook_runs_once_per_step():
    tok = make_tokenizer()
    examples = [{"prompt": "q" * (1 + i % 3), "response": "a" * (2 + i % 5)} for i in range(4)]  # unequal lengths
    full, accum = Recorder(), Recorder()
    train(make_model(seed=0), tok, examples, TrainConfig(batch_size=4, grad_accum=1, max_steps=1, device="cpu"),
          method=full, progress=False)
    train(make_model(seed=0), tok, examples, TrainConfig(batch_size=2, grad_accum=2, max_steps=1, device="cpu"),
          method=accum, progress=False)
    assert full.calls == accum.calls == 1
    for name, g in full.grads[0].items():
        torch.testing.assert_close(accum.grads[0][name], g, rtol=1e-5, atol=1e-7)


def test_hook_runs_before_clipping_and_step(tmp_path):
    tok = make_tokenizer()
    model = make_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    zero = Recorder(scale=0.0)  # a "filter" that removes everything: the step must not move the weights
    train(model, tok, _examples(4), TrainConfig(batch_size=2, max_steps=2, lr=1e-2, device="cpu"), method=zero,
          progress=False)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
    big = Recorder(scale=1000.0)
    train(make_model(seed=0), tok, _examples(4), TrainConfig(batch_size=2, max_steps=1, device="cpu"), method=big,
          progress=False, out_dir=tmp_path)
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert record["grad_norm"] == pytest.approx(big.norms[0], rel=1e-4)  # clipping saw the hook's gradient
    assert record["recorded"] is True


def test_train_writes_run_dir_and_checkpoint_loads_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    model = make_model(seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(batch_size=4, epochs=2, lr=1e-3, device="cpu", seed=1)
    result = train(model, tok, _examples(10), cfg, out_dir=tmp_path, progress=False)
    assert result["steps"] == 6 and result["examples"] == 10
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {"step", "loss", "lr", "grad_norm", "seconds"} <= set(json.loads(lines[0]))
    import yaml

    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["method"] == "sft" and "spf_rank" in saved
    assert sorted(p.name for p in (tmp_path / "checkpoint").glob("*.safetensors")) == ["model.safetensors"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint")
    moved = False
    for n, p in reloaded.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[n])
        moved |= not torch.equal(p, start[n])
    assert moved


def test_lora_is_merged_into_plain_modules(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    model = make_model(seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, tok, _examples(4), TrainConfig(batch_size=2, max_steps=2, lr=1e-2, lora=True, lora_r=4,
                                                 device="cpu"), out_dir=tmp_path, progress=False)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert set(dict(model.named_parameters())) == set(start)
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint")
    for n, p in reloaded.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[n])


@pytest.mark.parametrize("lora", [False, True])
def test_spf_method_runs_in_the_loop(lora):
    tok = make_tokenizer()
    model = make_model(seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, tok, _examples(4), TrainConfig(batch_size=2, max_steps=2, lr=1e-2, lora=lora, lora_r=4,
                                                          device="cpu"), method="spf", progress=False)
    assert result["method"] == "spf" and "spf_conflict_rate" in result
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())


def test_method_registry():
    assert {"sft", "spf"} <= set(available_methods())
    with pytest.raises(ValueError, match="did you mean 'spf'"):
        make_method("spff")

    @register_method("test-noop")
    class Noop:
        name = "test-noop"

        def __init__(self, spf_config=None, **options):
            self.options = options

        def prepare_data(self, examples):
            return examples[:1]

    tok = make_tokenizer()
    cfg = TrainConfig(batch_size=4, epochs=1, device="cpu", method_options=["k=v"])
    result = train(make_model(), tok, _examples(8), cfg, method="test-noop", progress=False)
    assert result["examples"] == 1 and result["method"] == "test-noop"
    with pytest.raises(ValueError, match="already registered"):
        register_method("test-noop")(Noop)


def test_train_config_from_dict():
    cfg = TrainConfig.from_dict({"batch-size": 4, "lr": 1e-4})
    assert cfg.batch_size == 4
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['batchsize'\]"):
        TrainConfig.from_dict({"batchsize": 4})


def test_first_token_weight_scales_only_each_rows_first_response_token():
    from spftune.core.chat import IGNORE_INDEX, response_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)  # (B, T, V)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 2:5] = torch.tensor([3, 4, 5])  # first response token at position 2
    labels[1, 4:6] = torch.tensor([6, 7])  # a shorter response starting later
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    first = [(0, 1), (1, 3)]  # shifted positions of the first labelled tokens
    plain = response_loss(logits, labels)
    assert torch.allclose(plain, per_token.sum() / 5)
    weighted = response_loss(logits, labels, first_token_weight=4.0)
    extra = sum(per_token[r, c] for r, c in first) * 3.0
    assert torch.allclose(weighted, (per_token.sum() + extra) / 5)
    # w = 1 through the weighted path agrees with the plain mean
    assert torch.allclose(response_loss(logits, labels, first_token_weight=1.0 + 1e-12), plain)


def test_first_token_weight_is_validated():
    with pytest.raises(ValueError, match="first_token_weight"):
        TrainConfig(first_token_weight=-1.0)
