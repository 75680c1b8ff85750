"""Baseline methods (spftune.baselines): each runs through the real loop on a tiny model, plus their invariants."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from tiny_models import make_model, make_tokenizer

import spftune.baselines  # noqa: F401  (registers the baselines)
from spftune.baselines import alignment_projection, safety_count
from spftune.baselines.safelora import base_weight_key, lora_layers
from spftune.core import SPFConfig
from spftune.core.capture import capture_gradients
from spftune.core.filter import build_safety_batch
from spftune.data import load_prompts
from spftune.train import TrainConfig, available_methods, make_method, train


def _examples(n: int = 6) -> list[dict[str, str]]:
    return [{"prompt": f"say {i}", "response": f"number {i} ok"} for i in range(n)]


def _safety_gradient(model, tokenizer, method) -> dict[str, torch.Tensor]:
    """G_s of the SPF safety example (dense, parameter shapes), taken independently of the method under test."""
    params = method.filter.params
    grads, _ = capture_gradients(model, build_safety_batch(tokenizer, method.config), params, factored=False)
    return {n: grads[n].dense.reshape(p.shape).clone() for n, p in params.items()}


def _aligned_random_grads_(model, reference: dict[str, torch.Tensor], *, sign: float, seed: int = 1) -> None:
    """Random gradients whose global inner product with ``reference`` has the given sign."""
    gen = torch.Generator().manual_seed(seed)
    grads = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters() if p.requires_grad}
    dot = sum(float((grads[n] * reference[n]).sum()) for n in grads if n in reference)
    flip = -1.0 if dot * sign < 0 else 1.0
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.grad = grads[n] * flip


# ---------------------------------------------------------------- every method through the loop

RUNS = [
    ("spf-conflict-only", False, {}),
    ("spf-per-tensor", False, {}),
    ("spf-update", False, {}),
    ("spf-update", True, {}),
    ("mix", False, {"fraction": "0.25"}),
    ("spf+mix", False, {"fraction": "0.25"}),
    ("safegrad", False, {"n_examples": "2", "max_length": "256"}),
    ("safegrad", True, {"n_examples": "2", "max_length": "256"}),
    ("safelora", True, {}),
]


@pytest.mark.parametrize("name,lora,options", RUNS, ids=[f"{n}-{'lora' if lo else 'full'}" for n, lo, _ in RUNS])
def test_method_runs_two_steps_in_the_loop_and_changes_the_weights(name, lora, options):
    tok = make_tokenizer()
    model = make_model(seed=0)
    if name == "safelora":
        options = {"base_model": make_model(seed=1)}  # an "unaligned" model of the same architecture
    method = make_method(name, **options)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(batch_size=2, max_steps=2, lr=1e-2, device="cpu", lora=lora, lora_r=4)
    result = train(model, tok, _examples(), cfg, method=method, progress=False)
    assert result["steps"] == 2 and result["method"] == name
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, f"{name} left every weight unchanged"
    if name.startswith("spf"):
        assert "spf_conflict_rate" in result  # the SPF statistics reach the run's summary
        # A global conflict always projects something; the per-tensor gate can also project without one.
        assert result["spf_projected_rate"] >= result["spf_conflict_rate"]
    if name == "safegrad":
        assert 0.0 <= result["safegrad_conflict_rate"] <= 1.0
    if name in ("mix", "spf+mix"):
        assert result["mix_safety_examples"] == 2 and result["examples"] == 8  # 2 of 8 = 0.25
    if name == "safelora":
        assert result["safelora_layers"] == 14  # 7 linear layers x 2 blocks
    if name == "spf-update":
        assert result["spf_update_snapshot_mb"] >= 0


# ---------------------------------------------------------------- non-conflicting gradients are left alone


def test_safegrad_leaves_a_non_conflicting_gradient_bit_identical_and_removes_a_conflict():
    tok = make_tokenizer()
    model = make_model(seed=0)
    method = make_method("safegrad", n_examples="2", max_length="256")
    method.setup(model, tok)
    g_a = {n: t.clone() for n, t in method.refresh(model).items()}

    _aligned_random_grads_(model, g_a, sign=+1.0)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = method.after_backward(model, 0)
    assert stats["safegrad_conflict"] is False and stats["safegrad_dot"] > 0
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, before[n]), n

    _aligned_random_grads_(model, g_a, sign=-1.0)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = method.after_backward(model, 1)
    assert stats["safegrad_conflict"] is True and stats["safegrad_dot"] < 0
    dot = sum(float((p.grad * g_a[n]).sum()) for n, p in model.named_parameters())
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    a_norm = math.sqrt(sum(float(t.pow(2).sum()) for t in g_a.values()))
    assert abs(dot) <= 1e-5 * norm * a_norm  # on the normal plane of g_a afterwards
    coef = stats["safegrad_coefficient"]
    for n, p in model.named_parameters():  # and only g_a was subtracted (rank-1)
        torch.testing.assert_close(p.grad, before[n] - coef * g_a[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["spf", "spf-conflict-only", "spf-per-tensor"])
def test_spf_leaves_a_non_conflicting_gradient_bit_identical(name):
    tok = make_tokenizer()
    model = make_model(seed=0)
    method = make_method(name)
    method.setup(model, tok)
    g_s = _safety_gradient(model, tok, method)
    for n, p in model.named_parameters():  # G_u = 2 G_s: no tensor conflicts, whatever the gate
        p.grad = 2.0 * g_s[n]
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = method.after_backward(model, 0)
    assert stats["spf_conflict"] is False and stats["spf_projected"] is False
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, before[n]), n


def test_spf_presets_set_their_field_and_keep_the_rest():
    base = SPFConfig(rank=7)
    assert make_method("spf-conflict-only", spf_config=base).config.removal == "conflict_only"
    per_tensor = make_method("spf-per-tensor", spf_config=base)
    assert per_tensor.config.gate == "per_tensor" and per_tensor.config.rank == 7 and per_tensor.name == "spf-per-tensor"
    assert base.gate == "global" and base.removal == "subspace"  # the caller's config is not mutated


# ---------------------------------------------------------------- spf-update


def test_spf_update_applied_update_is_orthogonal_to_the_safety_subspace_on_conflict_steps():
    tok = make_tokenizer()
    model = make_model(seed=0)
    method = make_method("spf-update")
    method.setup(model, tok)
    g_s = _safety_gradient(model, tok, method)
    for n, p in model.named_parameters():
        p.grad = -g_s[n]  # a fine-tuning gradient that climbs the safety loss
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(list(model.parameters()), lr=1e-2, weight_decay=0.1)
    method.after_backward(model, 0)
    optimizer.step()
    stats = method.after_step(model, 0)
    assert stats["spf_conflict"] is True and stats["spf_removed_fraction"] > 0.05
    checked = 0
    for n, p in model.named_parameters():
        basis = method.filter.bases[n]
        if basis.k == 0:
            continue
        minus_delta = (old[n] - p.detach()).reshape(basis.U.shape[0], -1)  # -Δ, as a matrix (m, n)
        adam_step = 1e-2 * p.numel() ** 0.5  # the size of an unfiltered first AdamW step (lr * sign(g))
        assert float((basis.U.T @ minus_delta).norm()) <= 1e-5 * adam_step, n
        checked += 1
    assert checked > 0


def test_spf_update_leaves_the_optimizer_step_alone_when_there_is_no_conflict():
    tok = make_tokenizer()
    models = [make_model(seed=0), make_model(seed=0)]
    method = make_method("spf-update")
    method.setup(models[0], tok)
    g_s = _safety_gradient(models[0], tok, method)
    optimizers = [torch.optim.AdamW(list(m.parameters()), lr=1e-2, weight_decay=0.0) for m in models]
    for m in models:
        for n, p in m.named_parameters():
            p.grad = g_s[n].clone()  # descends the safety loss: no conflict
    method.after_backward(models[0], 0)
    for opt in optimizers:
        opt.step()
    stats = method.after_step(models[0], 0)
    assert stats["spf_conflict"] is False
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-9)  # <= half an ulp off


# ---------------------------------------------------------------- mixing


@pytest.mark.parametrize("n,fraction", [(97, 0.03), (100, 0.2), (320, 0.2), (9, 0.1), (1, 0.5), (36, 0.1)])
def test_mix_fraction_is_exact(n, fraction):
    method = make_method("mix", fraction=str(fraction), seed="3")
    mixed = method.prepare_data(_examples(n))
    added = sum(e.get("source") == "safety" for e in mixed)
    assert len(mixed) == n + added == n + safety_count(n, fraction)
    assert Fraction(added, n + added) == Fraction(str(fraction))  # exactly the requested share
    assert mixed[:n] == _examples(n)  # task examples all kept, unchanged


@pytest.mark.parametrize("n", [1, 7, 10, 33, 250])
@pytest.mark.parametrize("fraction", [0.01, 0.03, 0.05, 0.1, 0.3, 0.9])
def test_mix_count_gives_the_closest_achievable_share(n, fraction):
    best = min(abs(Fraction(k, n + k) - Fraction(str(fraction))) for k in range(0, 20 * n + 200))
    k = safety_count(n, fraction)
    assert abs(Fraction(k, n + k) - Fraction(str(fraction))) == best


def test_mix_draws_refusals_from_the_train_split_only_and_is_seeded():
    train_prompts = {r["prompt"] for r in load_prompts("harmful", "train")}
    test_prompts = {r["prompt"] for r in load_prompts("harmful", "test")}
    a = make_method("mix", fraction="0.5", seed="1").prepare_data(_examples(400))  # more than the 180 train prompts
    b = make_method("mix", fraction="0.5", seed="1").prepare_data(_examples(400))
    refusals = [e for e in a if e.get("source") == "safety"]
    assert a == b and len(refusals) == 400
    assert {e["prompt"] for e in refusals} == train_prompts and not train_prompts & test_prompts


# ---------------------------------------------------------------- safelora


def _lora_model_with_rank_one_alignment(seed: int = 0):
    """A LoRA model, a base state dict with W_base = W_aligned - u v^T per layer, and per-layer (u, v).

    Even layers get B in span(u) (cosine 1: kept), odd layers get B mostly orthogonal to u (cosine ~0.2: projected).
    """
    gen = torch.Generator().manual_seed(seed)
    model = make_model(lora=True, seed=seed)
    base, alignment = {}, {}
    for i, (name, module, adapter) in enumerate(lora_layers(model)):
        weight = module.get_base_layer().weight.detach()
        m, d = weight.shape
        u = torch.randn(m, generator=gen)
        u /= u.norm()
        v = torch.randn(d, generator=gen)
        base[base_weight_key(name)] = weight - torch.outer(u, v)
        alignment[name] = torch.outer(u, v)
        r = module.lora_A[adapter].weight.shape[0]
        coeff = torch.randn(r, generator=gen)
        if i % 2 == 0:
            b = torch.outer(u, coeff)
        else:
            w = torch.randn(m, generator=gen)
            w -= (w @ u) * u
            w /= w.norm()
            b = torch.outer(0.2 * u + w, coeff)
        with torch.no_grad():
            module.lora_B[adapter].weight.copy_(b)
            module.lora_A[adapter].weight.copy_(torch.randn(module.lora_A[adapter].weight.shape, generator=gen))
    return model, base, alignment


def test_safelora_projects_layers_at_or_below_the_threshold_and_leaves_the_others_untouched():
    model, base, alignment = _lora_model_with_rank_one_alignment()
    layers = list(lora_layers(model))
    before = {name: module.lora_B[ad].weight.detach().clone() for name, module, ad in layers}
    method = make_method("safelora", base_model=base, select="threshold", threshold="0.5")
    method.setup(model, None)
    summary = method.finish(model)
    assert summary["safelora_layers"] == len(layers) and summary["safelora_projected"] == len(layers) // 2
    for (name, module, ad), record in zip(layers, method.layers):
        v = alignment[name]
        c = v @ v.T / v.norm()
        delta = before[name] @ module.lora_A[ad].weight.detach()
        expected_cos = float(torch.nn.functional.cosine_similarity((c @ delta).flatten(), delta.flatten(), dim=0))
        assert record["cosine"] == pytest.approx(expected_cos, abs=1e-5)  # the Gram-matrix cosine is the dense one
        new_b = module.lora_B[ad].weight.detach()
        if record["cosine"] > 0.5:
            assert not record["projected"] and torch.equal(new_b, before[name])
        else:
            assert record["projected"]
            torch.testing.assert_close(new_b @ module.lora_A[ad].weight.detach(), c @ delta, rtol=1e-4, atol=1e-6)
    assert {r["projected"] for r in method.layers[0::2]} == {False} and {r["projected"] for r in method.layers[1::2]} == {True}


def test_safelora_number_mode_projects_the_lowest_cosines():
    model, base, _ = _lora_model_with_rank_one_alignment(seed=2)
    method = make_method("safelora", base_model=base, select="number", num_layers="3")
    method.setup(model, None)
    assert method.finish(model)["safelora_projected"] == 3
    chosen = sorted(method.layers, key=lambda r: r["cosine"])
    assert [r["projected"] for r in chosen] == [True] * 3 + [False] * (len(chosen) - 3)


def test_safelora_alignment_projection_of_a_zero_alignment_is_undefined():
    b, a = torch.randn(6, 2), torch.randn(2, 5)
    projected, cosine = alignment_projection(torch.zeros(6, 5), b, a)
    assert projected is None and math.isnan(cosine)


def test_safelora_without_lora_is_a_clear_error():
    method = make_method("safelora", base_model=make_model(seed=1))
    with pytest.raises(ValueError, match="--lora"):
        train(make_model(seed=0), make_tokenizer(), _examples(4), TrainConfig(max_steps=1, device="cpu"),
              method=method, progress=False)


def test_safelora_with_a_mismatched_base_model_names_the_weight():
    model = make_model(lora=True)
    method = make_method("safelora", base_model={"unrelated.weight": torch.zeros(2, 2)})
    method.setup(model, None)
    with pytest.raises(ValueError, match="has no weight 'model.layers.0"):
        method.finish(model)


# ---------------------------------------------------------------- names and options


def test_all_baselines_are_registered():
    assert set(spftune.baselines.BASELINES) <= set(available_methods())


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(ValueError, match="did you mean 'safegrad'"):
        make_method("safegrd")
    with pytest.raises(ValueError, match="did you mean 'spf-update'"):
        make_method("spf-updte")


@pytest.mark.parametrize("name,options,match", [
    ("mix", {"fraction": "1.5"}, "option fraction='1.5' must be strictly between 0 and 1"),
    ("mix", {"fraction": "abc"}, "option fraction='abc' must be a number"),
    ("spf+mix", {"fraction": "0"}, "method 'spf\\+mix': option fraction"),
    ("safegrad", {"n_examples": "0"}, "option n_examples='0' must be an integer >= 1"),
    ("safegrad", {"n_exampels": "3"}, "has no option 'n_exampels'; valid options: max_length, n_examples"),
    ("safelora", {"threshold": "2"}, "option threshold='2' must be in \\[-1, 1\\]"),
    ("safelora", {"select": "top"}, "option select='top' must be one of threshold, number"),
    ("spf-update", {"rank": "3"}, "method 'spf-update' has no option 'rank'; valid options: none; .*--spf-rank"),
    ("spf-per-tensor", {"x": "1"}, "method 'spf-per-tensor' has no option 'x'"),
])
def test_options_are_validated_with_a_one_line_error_naming_the_option(name, options, match):
    with pytest.raises(ValueError, match=match) as info:
        make_method(name, **options)
    assert "\n" not in str(info.value)


def test_cli_strings_become_typed_options():
    method = make_method("safegrad", n_examples="3", refresh_every="2")
    assert method.n_examples == 3 and method.refresh_every == 2
    mix = make_method("spf+mix", fraction="0.1", seed="4")
    assert mix.parts[0].fraction == 0.1 and mix.parts[0].seed == 4 and mix.config is not None
