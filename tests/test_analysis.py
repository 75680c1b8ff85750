"""spftune.analysis: exact math on constructed gradients, and analyze end to end on a tiny random model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_models import make_model, make_tokenizer

from spftune.analysis import (
    analyze,
    chance_overlap,
    gradient_basis,
    gradient_inner,
    gradient_norm_sq,
    overlap_curve,
)
from spftune.analysis.conflict import cosine, fire_rate, pooled_cosines
from spftune.analysis.grouping import layer_key, ordered_layer_keys, tensor_depth, tensor_type
from spftune.analysis.spectra import explained_ratio
from spftune.core.capture import TensorGradient

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REQUIRED_KEYS = {"cer_safety", "cer_utility", "conflict_cosine", "overlap_single_vs_batch"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def orthonormal(m: int, k: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(m, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def known_rank(m: int, n: int, s: list[float], extra_rows: int = 0, seed: int = 0) -> tuple[TensorGradient, torch.Tensor]:
    """G = U diag(s) V^T in factored form A^T B with len(s) + extra_rows rows (extra rows are zero)."""
    r = len(s)
    u, v = orthonormal(m, r, seed), orthonormal(n, r, seed + 1)
    a = torch.cat([(u * torch.tensor(s)).T, torch.zeros(extra_rows, m)])  # (T, m)
    b = torch.cat([v.T, torch.zeros(extra_rows, n)])  # (T, n)
    return TensorGradient(shape=torch.Size([m, n]), factors=[(a, b)]), u


def expected_cer(s: list[float], k_max: int) -> list[float]:
    e = [x * x for x in s]
    return [min(1.0, sum(e[:k]) / sum(e)) for k in range(1, k_max + 1)]


# --- finding 1: spectra ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m,n,extra", [(40, 30, 0), (60, 8, 20), (8, 60, 20)], ids=["factored-left", "factored-right", "wide"]
)
def test_cer_exact_on_known_rank(m, n, extra):
    s = [5.0, 3.0, 2.0, 1.0, 0.5][: min(5, n)]
    grad, u_true = known_rank(m, n, s, extra_rows=extra)
    u, values = gradient_basis(grad, rank=10)
    assert u.shape[1] == len(s)  # k_b = rank of G, not the requested 10
    assert explained_ratio(values, 8) == pytest.approx(expected_cer(s, 8), abs=1e-5)
    assert overlap_curve(u, u_true, len(s))[-1] == pytest.approx(1.0, abs=1e-5)
    dense = TensorGradient(shape=grad.shape, dense=grad.materialize())
    assert explained_ratio(gradient_basis(dense, 10)[1], 8) == pytest.approx(expected_cer(s, 8), abs=1e-5)


def test_tall_route_matches_dense_svd_with_embedding_ids():
    # A tied embedding: id factor (embedding) + dense factor (lm_head), many tokens, so the right-side route runs.
    gen = torch.Generator().manual_seed(3)
    v, d, t = 50, 6, 30
    ids = torch.randint(0, v, (t,), generator=gen)
    grad = TensorGradient(
        shape=torch.Size([v, d]),
        factors=[(ids, torch.randn(t, d, generator=gen)), (torch.randn(t, v, generator=gen), torch.randn(t, d, generator=gen))],
    )
    dense = grad.materialize()
    u, s = gradient_basis(grad, rank=4)
    assert s[:d] == pytest.approx(torch.linalg.svdvals(dense), rel=1e-4)
    u_ref = torch.linalg.svd(dense, full_matrices=False)[0][:, :4]
    assert overlap_curve(u, u_ref, 4) == pytest.approx([1.0] * 4, abs=1e-4)


def test_zero_gradient_has_empty_basis_and_zero_cer():
    grad = TensorGradient(shape=torch.Size([5, 4]), factors=[(torch.zeros(3, 5), torch.zeros(3, 4))])
    u, s = gradient_basis(grad, 3)
    assert u.shape == (5, 0)
    assert explained_ratio(s, 3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="rank"):
        gradient_basis(grad, 0)


# --- finding 3: overlap ---------------------------------------------------------------------------------------


def test_overlap_self_is_one_orthogonal_is_zero():
    q = orthonormal(30, 10)
    u1, u2 = q[:, :5], q[:, 5:]
    assert overlap_curve(u1, u1, 5) == pytest.approx([1.0] * 5, abs=1e-6)
    assert overlap_curve(u1, u2, 5) == pytest.approx([0.0] * 5, abs=1e-6)
    # Same span, rotated basis: full overlap at k = 5 only.
    rot = orthonormal(5, 5, seed=7)
    assert overlap_curve(u1, u1 @ rot, 5)[-1] == pytest.approx(1.0, abs=1e-6)
    assert chance_overlap(30, 3) == pytest.approx([1 / 30, 2 / 30, 3 / 30])
    assert math.isnan(overlap_curve(u1, u1[:, :0], 2)[0])


# --- finding 2: conflict --------------------------------------------------------------------------------------


def _random_factored(m, n, t, seed, ids: bool = False) -> TensorGradient:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, m, (t,), generator=gen) if ids else torch.randn(t, m, generator=gen)
    return TensorGradient(shape=torch.Size([m, n]), factors=[(a, torch.randn(t, n, generator=gen))])


@pytest.mark.parametrize("ids1,ids2", [(False, False), (True, False), (False, True), (True, True)])
def test_inner_product_matches_dense(ids1, ids2):
    g1, g2 = _random_factored(9, 7, 5, 1, ids1), _random_factored(9, 7, 4, 2, ids2)
    d1, d2 = g1.materialize(), g2.materialize()
    assert gradient_inner(g1, g2) == pytest.approx(float((d1 * d2).sum()), rel=1e-5)
    assert gradient_inner(g1, TensorGradient(shape=g2.shape, dense=d2)) == pytest.approx(float((d1 * d2).sum()), rel=1e-5)
    assert gradient_norm_sq(g1) == pytest.approx(float(d1.pow(2).sum()), rel=1e-5)


@pytest.mark.parametrize("t_u", [2, 40], ids=["factored-route", "dense-route"])
def test_tensor_products_agree_across_routes(t_u):
    from spftune.analysis.conflict import _cheaper_dense, tensor_products

    gu = {"w": _random_factored(6, 5, t_u, seed=5), "emb": _random_factored(7, 5, t_u, seed=6, ids=True)}
    gs = {"w": _random_factored(6, 5, 3, seed=7), "emb": _random_factored(7, 5, 3, seed=8, ids=True)}
    assert _cheaper_dense(gu["w"], [gs["w"]]) == (t_u == 40)
    norms = {k: gradient_norm_sq(g) for k, g in gs.items()}
    seen = {}
    (products,) = tensor_products(gu, [gs], [norms], visit_dense=seen.__setitem__, visit=lambda n: n == "w")
    assert set(seen) == {"w"} and torch.allclose(seen["w"], gu["w"].materialize(), atol=1e-5)
    for name in gu:
        du, ds = gu[name].materialize(), gs[name].materialize()
        assert products[name] == pytest.approx(
            (float((du * ds).sum()), float(du.pow(2).sum()), float(ds.pow(2).sum())), rel=1e-4
        )


def test_conflict_cosine_sign_on_constructed_cases():
    gs = _random_factored(8, 6, 3, seed=4)
    a, b = gs.factors[0]
    opposite = TensorGradient(shape=gs.shape, factors=[(-2 * a, b)])
    same = TensorGradient(shape=gs.shape, factors=[(a, 3 * b)])
    ns = gradient_norm_sq(gs)
    assert cosine(gradient_inner(opposite, gs), gradient_norm_sq(opposite), ns) == pytest.approx(-1.0, abs=1e-5)
    assert cosine(gradient_inner(same, gs), gradient_norm_sq(same), ns) == pytest.approx(1.0, abs=1e-5)
    # Orthogonal: disjoint rows of the left factor.
    left = TensorGradient(shape=torch.Size([4, 3]), factors=[(torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1, 3))])
    right = TensorGradient(shape=torch.Size([4, 3]), factors=[(torch.tensor([[0, 1.0, 0, 0]]), torch.ones(1, 3))])
    assert gradient_inner(left, right) == 0.0
    assert math.isnan(cosine(1.0, 0.0, 1.0))
    # Pooling sums inner products before dividing: a large aligned tensor outweighs a small opposed one.
    products = {"model.layers.0.q_proj.weight": (-1.0, 1.0, 1.0), "model.layers.0.k_proj.weight": (8.0, 16.0, 16.0)}
    assert pooled_cosines(products)["global"] == pytest.approx(7.0 / 17.0)
    assert pooled_cosines(products, tensor_type)["q_proj"] == pytest.approx(-1.0)
    assert fire_rate([-1.0, 2.0, -0.5, 3.0]) == 0.5


def test_names_to_groups():
    assert tensor_type("model.layers.3.self_attn.q_proj.weight") == "q_proj"
    assert tensor_type("model.layers.3.self_attn.q_proj.bias") == "q_proj.bias"
    assert tensor_type("base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight") == "up_proj.lora_A"
    assert tensor_type("model.embed_tokens.weight") == "embed_tokens"
    assert tensor_depth("model.layers.12.mlp.down_proj.weight") == 12
    assert tensor_depth("model.norm.weight") is None
    assert layer_key("model.norm.weight") == "norm"
    names = ["model.embed_tokens.weight", "model.layers.1.a.weight", "model.layers.0.a.weight", "model.norm.weight"]
    assert ordered_layer_keys(names) == ["embed_tokens", "0", "1", "norm"]


# --- end to end -----------------------------------------------------------------------------------------------

SMALL = dict(rank=4, n_batches=2, batch_size=2, n_safety_batch=3, category_batch=2, max_categories=3, max_length=160)


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # gemma3: tied embeddings, scaled embedding module
def test_analyze_end_to_end_writes_outputs(tmp_path, family):
    model = make_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = analyze(model, make_tokenizer(), utility_examples="spftune-synthetic", out_dir=tmp_path, **SMALL)
    data = json.loads((tmp_path / "analysis.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert REQUIRED_KEYS <= set(data)
    for name in ("cer.png", "conflict.png", "overlap.png", "category_transfer.png", "analysis.md"):
        assert (tmp_path / name).stat().st_size > 0
    n_matrices = data["settings"]["weight_matrices"]
    assert len(data["cer_safety"]["per_tensor"]) == len(data["cer_utility"]["per_tensor"]) == n_matrices
    for curve in data["cer_safety"]["per_tensor"].values():
        assert len(curve) == 4 and all(0 <= x <= 1 + 1e-6 for x in curve) and curve == sorted(curve)
    assert len(data["conflict_cosine"]["global_cosine"]) == 2
    assert -1 <= data["conflict_cosine"]["global_cosine"][0] <= 1
    assert len(data["category_transfer"]["matrix"]) == 3
    assert [f["key"] for f in data["findings"]] == ["low_rank", "conflict", "one_sample"]
    assert "low_rank" in (tmp_path / "analysis.md").read_text()
    assert result.cer_safety.at(4) == pytest.approx(data["cer_safety"]["mean"][3])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # nothing was trained
    assert all(p.grad is None for p in model.parameters())


def test_analyze_accepts_example_lists_and_no_categories():
    utility = [{"prompt": f"Say {i}.", "response": f"{i}"} for i in range(3)]
    safety = [{"prompt": "Help me hurt someone.", "refusal": "I can't help with that."}] * 2
    result = analyze(make_model("llama"), make_tokenizer(), utility_examples=utility, safety_examples=safety,
                     rank=2, n_batches=3, batch_size=2, n_safety_batch=2, max_length=160)
    assert result.category_transfer is None
    assert result.conflict.steps == 2  # 3 examples in batches of 2
    assert set(result.to_dict()) >= REQUIRED_KEYS


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rank=0), "rank"),
        (dict(rank=2.5), "rank"),
        (dict(utility_examples="no-such-task"), "no-such-task"),
        (dict(utility_examples=[]), "utility_examples"),
        (dict(safety_examples=[]), "safety_examples"),
        (dict(safety_examples=[{"prompt": "x"}]), r"safety_examples\[0\]"),
        (dict(n_batches=0), "n_batches"),
    ],
)
def test_analyze_bad_input_is_one_line_value_error(kwargs, match):
    args = dict(utility_examples="spftune-synthetic", **SMALL) | kwargs
    with pytest.raises(ValueError, match=match) as info:
        analyze(make_model("llama"), make_tokenizer(), **args)
    assert "\n" not in str(info.value)


def test_gsm8k_utility_from_data_dir():
    from spftune.analysis.sources import load_utility

    if not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file():
        pytest.skip("../shared/data/gsm8k/train.jsonl not present")
    demos = load_utility("gsm8k", n=4, seed=1, data_dir=SHARED_DATA)
    assert len(demos) == 4 and all("####" in d.response and d.prompt for d in demos)
    assert load_utility("gsm8k", n=4, seed=1, data_dir=SHARED_DATA) == demos  # seeded
    with pytest.raises(FileNotFoundError, match="gsm8k/train.jsonl"):
        load_utility("gsm8k", n=4, data_dir=SHARED_DATA / "advbench")


def test_cli_analyze_end_to_end(tmp_path, capsys):
    from spftune.cli.main import main

    model_dir = tmp_path / "tiny"
    make_model("llama").save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    utility = tmp_path / "task.jsonl"
    utility.write_text("".join(json.dumps({"prompt": f"Add {i} and 1.", "response": str(i + 1)}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    argv = ["analyze", "--model", str(model_dir), "--utility", str(utility), "--out", str(out), "--rank", "3",
            "--n-batches", "2", "--batch-size", "3", "--n-safety-batch", "2", "--max-categories", "0", "--no-plots",
            "--no-progress"]
    assert main(argv) == 0
    assert REQUIRED_KEYS <= set(json.loads((out / "analysis.json").read_text()))
    assert "low_rank" in capsys.readouterr().out
    assert main(argv[:-6] + ["--rank", "0"]) == 2
    assert main([*argv[:3], "--utility", "nope.jsonl", "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spftune analyze: error")]
    assert len(err) == 2 and "--rank" in err[0] and "nope.jsonl" in err[1]


def test_add_parser_and_yaml_config(tmp_path):
    import argparse

    from spftune.analysis.cli import add_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    config = tmp_path / "analyze.yaml"
    config.write_text("rank: 7\nutility: gsm8k\ntargets: ['q_proj']\n")
    args = parser.parse_args(["analyze", "--config", str(config), "--rank", "5"])
    cfg = config_from_args(args)
    assert (cfg.rank, cfg.utility, cfg.targets, cfg.n_batches) == (5, "gsm8k", ["q_proj"], 4)
    assert config_from_args(parser.parse_args(["analyze"])).targets == "all"
