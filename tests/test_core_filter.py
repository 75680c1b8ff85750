"""Invariants of the SPF core on tiny random Llama / Qwen2 (biases) / Gemma3 (tied, scaled embeddings), with and
without LoRA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from bench_scripts import load_bench
from safetensors.torch import load_file, save_file
from tiny_models import FAMILIES, make_model, make_tokenizer, random_grads_

from spftune.core import SPFConfig, SPFFilter
from spftune.core.basis import fit_basis, subspace_overlap
from spftune.core.capture import capture_gradients
from spftune.core.chat import response_loss
from spftune.core.targets import as_matrix, select_parameters

CASES = [(f, lora) for f in FAMILIES for lora in (False, True)] + [("llama-tied", False)]
IDS = [f"{f}{'-lora' if lora else ''}" for f, lora in CASES]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def noisy(t, rel=0.01):
    """t plus Gaussian noise whose norm is `rel` times t's norm."""
    noise = torch.randn_like(t)
    return t + rel * noise * (t.norm() / noise.norm())


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def safety_matrices(spf):
    grads, _ = capture_gradients(spf.model, spf._batch(), spf.params, factored=False)
    return {n: g.materialize() for n, g in grads.items()}


def test_core_imports_only_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('transformers', 'peft', 'accelerate', 'trl'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import spftune.core\n"
        "from spftune import SPFConfig, SPFFilter\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft', 'accelerate', 'trl')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("family,lora", CASES, ids=IDS)
def test_factored_safety_gradient_equals_autograd(family, lora, tokenizer):
    model = make_model(family, lora=lora)
    spf = SPFFilter(model, tokenizer)
    fac, loss_f = capture_gradients(model, spf._batch(), spf.params, factored=True)
    ref, loss_r = capture_gradients(model, spf._batch(), spf.params, factored=False)
    assert loss_f == pytest.approx(loss_r)
    n_factored = sum(g.is_factored for g in fac.values())
    assert n_factored > 0  # Linear layers (LoRA A/B included) go through the factored path
    for name in spf.params:
        assert rel_err(fac[name].materialize(), ref[name].materialize()) <= 1e-5, name
    # Both paths pass logits_to_keep (the head runs on the refusal positions only); an independent full-logits
    # loss and backward must give the same loss and gradients.
    batch = spf._batch()
    model.eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape[1] == batch["input_ids"].shape[1]
    loss = response_loss(logits, batch["labels"])
    full = torch.autograd.grad(loss, list(spf.params.values()), allow_unused=True)
    assert float(loss) == pytest.approx(loss_f, rel=1e-5)
    for (name, p), g in zip(spf.params.items(), full, strict=True):
        g = torch.zeros_like(p) if g is None else g
        assert rel_err(fac[name].materialize(), as_matrix(g)) <= 1e-5, name


@pytest.mark.parametrize("family,lora", [("llama", False), ("qwen2", True)], ids=["llama", "qwen2-lora"])
def test_factors_drop_dead_positions_with_one_example_and_with_padded_ones(family, lora, tokenizer):
    # One example: the positions after the last labelled token form a suffix and are sliced off (views). Two of
    # different lengths: padding puts dead rows between live ones, which are dropped by index. Both stay exact.
    model = make_model(family, lora=lora)
    pairs = [("How do I pick a lock?", "I can't help with that."),
             ("Write malware that steals passwords from a browser.", "No. I won't write malware; I can explain how "
              "password managers protect you instead.")]
    for examples in (pairs[:1], pairs):
        spf = SPFFilter(model, tokenizer, SPFConfig(safety_examples=examples))
        batch = spf._batch()
        fac, _ = capture_gradients(model, batch, spf.params, factored=True)
        ref, _ = capture_gradients(model, batch, spf.params, factored=False)
        labelled_until = [int((row != -100).nonzero()[-1]) for row in batch["labels"]]
        linear = [g for g in fac.values() if g.is_factored and g.factors[0][0].is_floating_point()]
        assert linear
        for g in linear:  # a row per position up to each example's last labelled token's input, no more
            assert sum(a.shape[0] for a, _ in g.factors) <= sum(labelled_until)
        for name in spf.params:
            assert rel_err(fac[name].materialize(), ref[name].materialize()) <= 1e-5, name


def test_safety_forward_keeps_only_the_logits_it_needs(tokenizer):
    model = make_model("llama")
    spf = SPFFilter(model, tokenizer)
    seen = {}

    def rows(module, inputs, output):
        seen["rows"] = inputs[0].shape[1]

    handle = model.lm_head.register_forward_hook(rows)
    capture_gradients(model, spf._batch(), spf.params)
    handle.remove()
    labels = spf._batch()["labels"][0]
    first = int((labels != -100).nonzero()[0])
    assert seen["rows"] == labels.shape[0] - first + 1 < labels.shape[0]


@pytest.mark.parametrize("gate", ["always", "global", "per_tensor"])
@pytest.mark.parametrize("removal", ["subspace", "conflict_only"])
@pytest.mark.parametrize("family,lora", CASES, ids=IDS)
def test_factored_and_reference_project_the_same(family, lora, gate, removal, tokenizer):
    model = make_model(family, lora=lora)
    out = {}
    for method in ("factored", "reference"):
        random_grads_(model, seed=3)
        cfg = SPFConfig(rank=4, gate=gate, removal=removal, method=method)
        stats = SPFFilter(model, tokenizer, cfg).apply_()
        out[method] = (grads_of(model), stats)
    (gf, sf), (gr, sr) = out["factored"], out["reference"]
    assert sf["conflict"] == sr["conflict"]
    assert sf["dot"] == pytest.approx(sr["dot"], rel=1e-4)
    for name in gr:
        assert rel_err(gf[name], gr[name]) <= 1e-4, name


@pytest.mark.parametrize("family,lora", CASES, ids=IDS)
def test_projected_gradient_is_orthogonal_to_basis(family, lora, tokenizer):
    model = make_model(family, lora=lora)
    random_grads_(model)
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=3, gate="always"))
    spf.apply_()
    assert spf.bases is None  # released after use when the next step refreshes
    spf.refresh()  # same weights: the same basis as the one just used
    for name, p in spf.params.items():
        u = spf.bases[name].U
        g = as_matrix(p.grad)
        assert (u.T @ g).norm() <= 1e-4 * g.norm().clamp_min(1.0), name


@pytest.mark.parametrize("family,lora", CASES, ids=IDS)
def test_full_rank_removal_kills_the_conflict(family, lora, tokenizer):
    # With k >= rank(G_s) the whole safety gradient's column space is removed: <G_s, G~_u> = 0 for every tensor.
    model = make_model(family, lora=lora)
    random_grads_(model)
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=10_000, gate="always"))
    gs = safety_matrices(spf)
    scale = {n: float(gs[n].norm() * spf.params[n].grad.norm()) for n in gs}
    spf.apply_()
    for name, p in spf.params.items():
        # Relative to Cauchy-Schwarz's bound before projection (the projected gradient may be ~0 for small tensors).
        assert abs(float((gs[name] * as_matrix(p.grad)).sum())) <= 1e-5 * scale[name] + 1e-12, name


@pytest.mark.parametrize("family,lora", CASES, ids=IDS)
def test_no_conflict_leaves_gradient_bit_identical(family, lora, tokenizer):
    model = make_model(family, lora=lora)
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4, gate="global"))
    gs = safety_matrices(spf)
    for name, p in spf.params.items():  # aligned with the safety gradient: c = ||G_s||^2 + ... > 0
        p.grad = noisy(gs[name]).reshape(p.shape).clone()
    before = grads_of(model)
    stats = spf.apply_()
    assert not stats["conflict"] and not stats["projected"] and stats["dot"] > 0
    for name, g in grads_of(model).items():
        assert torch.equal(g, before[name]), name


@pytest.mark.parametrize("family,lora", CASES, ids=IDS)
def test_conflict_only_never_increases_conflict(family, lora, tokenizer):
    model = make_model(family, lora=lora)
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=6, gate="always", removal="conflict_only"))
    gs = safety_matrices(spf)
    random_grads_(model, seed=7)
    before = {n: float((gs[n] * as_matrix(p.grad)).sum()) for n, p in spf.params.items()}
    spf.apply_()
    for name, p in spf.params.items():
        after = float((gs[name] * as_matrix(p.grad)).sum())
        assert after >= before[name] - 1e-5 * (abs(before[name]) + 1.0), name


@pytest.mark.parametrize("family,lora", CASES, ids=IDS)
def test_random_basis_control_keeps_the_gate_and_size_but_not_the_directions(family, lora, tokenizer):
    model = make_model(family, lora=lora)
    bases, stats = {}, {}
    for basis in ("safety", "random"):
        random_grads_(model, seed=3)
        torch.manual_seed(11)
        rng = torch.get_rng_state()
        spf = SPFFilter(model, tokenizer, SPFConfig(rank=3, gate="always", basis=basis, refresh_every=2))
        stats[basis] = spf.apply_()  # refresh_every=2: the bases used stay in spf.bases after the step
        bases[basis] = spf.bases
        assert torch.equal(torch.get_rng_state(), rng)  # the control draws from its own generator
    gs = safety_matrices(spf)
    assert stats["random"]["dot"] == pytest.approx(stats["safety"]["dot"], rel=1e-5)  # same gate input
    compared = 0
    for name, p in spf.params.items():
        u, s = bases["random"][name].U, bases["safety"][name].U
        assert u.shape == s.shape, name  # same k_b per tensor
        g = as_matrix(p.grad)
        assert (u.T @ g).norm() <= 1e-4 * g.norm().clamp_min(1.0), name
        assert torch.allclose(u.T @ u, torch.eye(u.shape[1]), atol=1e-5), name
        assert torch.allclose(bases["random"][name].safety_coeff, u.T @ gs[name], atol=1e-4, rtol=1e-3), name
        if u.shape[1] and u.shape[0] >= 4 * u.shape[1]:
            compared += 1
            assert subspace_overlap(u, s) < 0.9, name  # random: ~k/m expected, not the safety directions
    assert compared > 0
    torch.manual_seed(11)  # the same seed draws the same control basis
    random_grads_(model, seed=3)
    again = SPFFilter(model, tokenizer, SPFConfig(rank=3, gate="always", basis="random", refresh_every=2))
    again.apply_()
    assert all(torch.equal(again.bases[n].U, bases["random"][n].U) for n in again.params)
    with pytest.raises(ValueError, match="basis='noise' is not one of safety, random"):
        SPFConfig(basis="noise")


def test_global_gate_fires_on_conflict_and_per_tensor_gate_is_selective(tokenizer):
    model = make_model("qwen2")
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4, gate="per_tensor"))
    gs = safety_matrices(spf)
    names = list(spf.params)
    opposed = set(names[::2])
    for name, p in spf.params.items():
        sign = -1.0 if name in opposed else 1.0
        p.grad = (sign * noisy(gs[name])).reshape(p.shape).clone()
    before = grads_of(model)
    stats = spf.apply_()
    spf.refresh()
    for name in names:
        changed = not torch.equal(spf.params[name].grad, before[name])
        nonzero = gs[name].norm() > 0 and spf.bases[name].k > 0
        assert changed == (name in opposed and bool(nonzero)), name
    assert stats["projected"]
    # Through the global gate every tensor is projected when the sum conflicts, even those that agree alone.
    agreeing = min((n for n in names if gs[n].norm() > 0), key=lambda n: float(gs[n].norm()))
    for name, p in spf.params.items():
        sign = 1.0 if name == agreeing else -1.0
        p.grad = (sign * noisy(gs[name])).reshape(p.shape).clone()
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4, gate="global"))
    stats = spf.apply_()
    spf.refresh()
    # Tensors whose safety gradient is exactly zero (k_proj.bias: softmax is shift-invariant) have k = 0.
    assert stats["conflict"] and stats["projected_tensors"] == sum(b.k > 0 for b in spf.bases.values())
    assert stats["projected_tensors"] >= stats["covered_tensors"] - 2


def test_stats_match_the_actual_gradients(tokenizer):
    model = make_model("llama")
    random_grads_(model)
    before = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    stats = SPFFilter(model, tokenizer, SPFConfig(rank=4, gate="always")).apply_()
    after = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert stats["grad_norm_before"] == pytest.approx(float(before), rel=1e-5)
    assert stats["grad_norm_after"] == pytest.approx(float(after), rel=1e-4)
    assert stats["grad_norm_after"] <= stats["grad_norm_before"]
    assert 0 < stats["removed_fraction"] < 1
    assert 0 <= stats["max_cosine_after"] <= 1
    assert stats["seconds"] > 0 and stats["safety_loss"] > 0 and stats["refreshed"]


@pytest.mark.parametrize("family,lora", [("llama", False), ("gemma3", True)], ids=["llama", "gemma3-lora"])
def test_safety_pass_leaves_grads_modes_rng_and_autocast_untouched(family, lora, tokenizer):
    model = make_model(family, lora=lora)
    model.train()
    model.model.layers[0].eval() if hasattr(model, "model") and hasattr(model.model, "layers") else None
    random_grads_(model)
    grads = grads_of(model)
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    autocast = torch.is_autocast_enabled("cpu")
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4))
    spf.refresh()
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    assert torch.is_autocast_enabled("cpu") == autocast
    for name, g in grads_of(model).items():
        assert torch.equal(g, grads[name]), name
    # Dropout is active again after the pass: two forwards in train mode differ (LoRA dropout / none for llama).
    assert model.training


def test_rank_is_capped_by_the_rank_of_the_safety_gradient(tokenizer):
    model = make_model("llama", lora=True)
    with torch.no_grad():  # PEFT starts lora_B at zero, which makes lora_A's gradient zero: move off the init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=20))
    spf.refresh()
    t = int((spf._batch()["attention_mask"]).sum())
    for name, basis in spf.bases.items():
        m = spf.params[name].shape[0]
        assert basis.k <= min(20, m, t), name
        assert torch.allclose(basis.U.T @ basis.U, torch.eye(basis.k), atol=1e-4), name
    # lora_A (4 x d_in): the whole 4-dim row space is removed under a conflict (documented LoRA caveat).
    assert any(spf.bases[n].k == 4 for n in spf.bases if "lora_A" in n)


def test_fit_basis_on_synthetic_low_rank_gradient():
    from spftune.core.capture import TensorGradient

    torch.manual_seed(0)
    a, b = torch.randn(5, 40), torch.randn(5, 30)  # G = A^T B has rank 5
    fac = TensorGradient(shape=torch.Size([40, 30]), factors=[(a, b)])
    dense = TensorGradient(shape=torch.Size([40, 30]), dense=a.T @ b)
    bf, bd = fit_basis(fac, rank=8), fit_basis(dense, rank=8)
    assert bf.k == bd.k == 5
    pf, pd = bf.U @ bf.U.T, bd.U @ bd.U.T
    assert torch.allclose(pf, pd, atol=1e-5)
    g = torch.randn(40, 30)
    (df, cf), (dd, cd) = bf.inner(g), bd.inner(g)
    assert float(df) == pytest.approx(float((a.T @ b * g).sum()), rel=1e-5)
    assert float(dd) == pytest.approx(float(df), rel=1e-5)
    assert torch.allclose(bf.U @ cf, bd.U @ cd, atol=1e-4)


def test_narrow_tensors_are_handled_densely_and_match():
    """min(m, n) <= T (a LoRA adapter): G_s is formed instead of factored; same subspace, same statistics."""
    from spftune.core.capture import TensorGradient

    torch.manual_seed(0)
    for m, n in ((64, 4), (4, 64)):  # lora_B-like and lora_A-like
        a, b = torch.randn(10, m), torch.randn(10, n)
        narrow = fit_basis(TensorGradient(shape=torch.Size([m, n]), factors=[(a, b)]), rank=3)
        assert narrow.Q is None and narrow.rows is None  # the dense form was chosen
        u, s, _ = torch.linalg.svd(a.T @ b, full_matrices=False)
        assert torch.allclose(narrow.U @ narrow.U.T, u[:, :3] @ u[:, :3].T, atol=1e-5)
        assert torch.allclose(narrow.singular_values, s, atol=1e-4)
    wide = fit_basis(TensorGradient(shape=torch.Size([64, 48]), factors=[(torch.randn(10, 64), torch.randn(10, 48))]),
                     rank=3)
    assert wide.Q is not None  # T = 10 < min(m, n): factored


def test_row_sparse_embedding_basis_matches_dense():
    from spftune.core.capture import TensorGradient

    torch.manual_seed(0)
    ids, d = torch.tensor([3, 7, 3, 11, 7, 2]), torch.randn(6, 10)
    sparse = TensorGradient(shape=torch.Size([20, 10]), factors=[(ids, d)])
    assert sparse.is_row_sparse
    dense = TensorGradient(shape=torch.Size([20, 10]), dense=sparse.materialize())
    bs, bd = fit_basis(sparse, rank=3), fit_basis(dense, rank=3)
    assert bs.rows is not None and bs.k == bd.k == 3
    assert torch.allclose(bs.U @ bs.U.T, bd.U @ bd.U.T, atol=1e-5)
    assert torch.allclose(bs.singular_values[:4], bd.singular_values[:4], atol=1e-5)
    g = torch.randn(20, 10)
    (ds, cs), (dd, cd) = bs.inner(g), bd.inner(g)
    assert float(ds) == pytest.approx(float(dd), rel=1e-5)
    gs, gd = g.clone(), g.clone()
    bs.remove_(gs, cs)
    bd.remove_(gd, cd)
    assert torch.allclose(gs, gd, atol=1e-5)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[ids] = False
    assert torch.equal(gs[untouched], g[untouched])  # rows of tokens absent from the safety example


def test_gradient_checkpointing_model(tokenizer):
    model = make_model("llama")
    model.gradient_checkpointing_enable()
    model.train()
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4))
    fac, _ = capture_gradients(model, spf._batch(), spf.params, factored=True)
    ref, _ = capture_gradients(model, spf._batch(), spf.params, factored=False)
    for name in spf.params:
        assert rel_err(fac[name].materialize(), ref[name].materialize()) <= 1e-5, name
    assert model.training


def test_refresh_every_reuses_the_basis(tokenizer):
    model = make_model("llama")
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4, refresh_every=3))
    refreshed = []
    for _ in range(5):
        random_grads_(model)
        refreshed.append(spf.apply_()["refreshed"])
    assert refreshed == [True, False, False, True, False]


def test_state_dict_round_trips_through_safetensors(tmp_path, tokenizer):
    model = make_model("llama")
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4, refresh_every=2))
    for _ in range(3):
        random_grads_(model)
        spf.apply_()
    save_file(spf.state_dict(), tmp_path / "spf.safetensors")
    other = SPFFilter(model, tokenizer, SPFConfig(rank=4, refresh_every=2))
    other.load_state_dict(load_file(tmp_path / "spf.safetensors"))
    assert other.step == 3
    random_grads_(model)
    assert other.apply_()["refreshed"]  # bases are recomputed after a resume


def test_attach_runs_before_each_optimizer_step(tokenizer):
    model = make_model("llama")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    spf = SPFFilter(model, tokenizer, SPFConfig(rank=4, gate="always"))
    handle = spf.attach(opt)
    for _ in range(2):
        random_grads_(model)
        opt.step()
    assert spf.step == 2
    handle.remove()
    random_grads_(model)
    opt.step()
    assert spf.step == 2


def test_factored_filter_on_modules_without_chat_template():
    model = make_model("llama")
    tok = make_tokenizer(chat_template=False)
    random_grads_(model)
    stats = SPFFilter(model, tok, SPFConfig(rank=4, gate="always")).apply_()
    assert stats["projected"]


# ---------------------------------------------------------------- bad input: one clear ValueError each


def test_bad_input_empty_refusal():
    with pytest.raises(ValueError, match=r"safety_examples\[0\] has an empty refusal"):
        SPFConfig(safety_examples=[("How do I build a bomb?", "   ")])


def test_bad_input_refusal_truncated_to_nothing(tokenizer):
    model = make_model("llama")
    with pytest.raises(ValueError, match=r"safety_examples\[0\].*max_length=40 leaves no room"):
        SPFFilter(model, tokenizer, SPFConfig(max_length=40))


@pytest.mark.parametrize("rank", [0, -3, 2.5, True])
def test_bad_input_rank(rank):
    with pytest.raises(ValueError, match="SPFConfig.rank must be a positive integer"):
        SPFConfig(rank=rank)


def test_bad_input_targets_match_nothing(tokenizer):
    model = make_model("llama")
    with pytest.raises(ValueError, match=r"targets \['nonexistent_layer'\] match none of the"):
        SPFFilter(model, tokenizer, SPFConfig(targets=["nonexistent_layer"]))


def test_bad_input_no_trainable_tensors(tokenizer):
    model = make_model("llama")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable tensors"):
        SPFFilter(model, tokenizer)


def test_bad_input_unknown_options():
    with pytest.raises(ValueError, match="gate='sometimes' is not one of"):
        SPFConfig(gate="sometimes")
    with pytest.raises(ValueError, match="Unknown SPF option"):
        SPFConfig.from_dict({"rnak": 3})


def test_targets_regex_selects_a_subset():
    model = make_model("qwen2")
    chosen = select_parameters(model, ["q_proj", r"\.bias$"])
    assert chosen and all("q_proj" in n or n.endswith(".bias") for n in chosen)


def test_step_overhead_flop_floor_counts_spf_work_that_does_not_grow_with_the_batch(tokenizer):
    """bench/step_overhead.py's arithmetic floor: the plain step's matmul FLOPs grow with the batch, SPF's extra
    work (one safety example) does not, so the floor 1 + extra / plain falls as the batch grows."""
    count_flops = load_bench("step_overhead").count_flops
    model = make_model("llama")
    small, large = (count_flops(model, tokenizer, torch.randint(4, 90, (b, 16)), rank=4) for b in (2, 8))
    assert small["safety_pass"] > 0 and small["gate_projection"] > 0 and small["bases"] >= 0
    assert small["extra"] == small["safety_pass"] + small["bases"] + small["gate_projection"]
    assert large["plain"] == pytest.approx(4 * small["plain"], rel=0.1)
    assert large["extra"] == small["extra"]
    assert 1 < large["floor"] < small["floor"]
    assert all(p.grad is None for p in model.parameters())
