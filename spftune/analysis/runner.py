"""``analyze``: measure the paper's three findings on a model, a safety set and a utility set.

Passes (each one forward + one ``autograd.grad`` through :func:`spftune.core.capture.capture_gradients`):

1. the single SPF safety example (default: the filter's built-in one) -> G_1, its CER and top-k bases U_1;
2. a batch of ``n_safety_batch`` other safety examples, harm categories mixed -> G_s, CER (finding 1), bases U_s,
   overlap(U_1, U_s) as a function of k (finding 3);
3. ``n_batches`` utility batches of ``batch_size`` -> cosines with G_1 (SPF's gate) and with G_s (finding 2); the
   first batch also gives the utility CER (finding 1);
4. per harm category (up to ``max_categories``): one example and a batch of ``category_batch`` others -> the
   category transfer matrix of overlaps at k = rank.

Gradients stay factored (no (m, n) matrix except the small ones of norms and biases); only the last capture and the
k-column bases are held in memory.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spftune.analysis.conflict import cosine, fire_rate, gradient_norm_sq, pooled_cosines, tensor_products
from spftune.analysis.grouping import layer_key, tensor_type
from spftune.analysis.overlap import chance_overlap, mean_overlap, overlap_curve
from spftune.analysis.result import (
    AnalysisResult,
    CategoryTransfer,
    ConflictSummary,
    CurveSummary,
    FindingThresholds,
    OverlapSummary,
    judge,
)
from spftune.analysis.sources import (
    Demo,
    as_demo,
    by_category,
    default_safety_examples,
    encode_batch,
    load_utility,
    round_robin,
    spf_demo,
)
from spftune.analysis.spectra import explained_ratio, is_matrix, matrix_shape, spectra, subspace_bases
from spftune.core.basis import singular_values
from spftune.core.capture import TensorGradient, capture_gradients
from spftune.core.targets import select_parameters


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class _Clock:
    def __init__(self, progress: bool) -> None:
        self.start = time.perf_counter()
        self.last = self.start
        self.progress = progress
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.last
        self.last = now
        if self.progress:
            print(f"spftune analyze: {stage} done ({now - self.start:.0f} s)", file=sys.stderr, flush=True)


def _utility_demos(utility_examples: Any, n: int, seed: int, data_dir: Any) -> tuple[list[Demo], str]:
    if isinstance(utility_examples, (str, os.PathLike)):
        return load_utility(utility_examples, n=n, seed=seed, data_dir=data_dir), str(utility_examples)
    demos = []
    for i, item in enumerate(utility_examples or []):
        if isinstance(item, dict) and "response" not in item and "refusal" not in item:
            raise ValueError(f"utility_examples[{i}]: expected a dict with 'prompt' and 'response', got keys {sorted(item)}")
        demos.append(as_demo(item, f"utility_examples[{i}]"))
    if not demos:
        raise ValueError("utility_examples is empty; pass a task name, a data file, or a list of {prompt, response}")
    if len(demos) > n:
        import random

        keep = sorted(random.Random(seed).sample(range(len(demos)), n))
        demos = [demos[i] for i in keep]
    return demos, f"{len(demos)} examples given in code"


def _capture(model, tokenizer, demos: Sequence[Demo], params, max_length: int, what: str):
    batch = encode_batch(tokenizer, demos, max_length, what)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    grads, loss = capture_gradients(model, batch, params)
    tokens = int(batch["attention_mask"].sum())
    return grads, loss, tokens


def _norms(grads: dict[str, TensorGradient]) -> dict[str, float]:
    return {name: gradient_norm_sq(g) for name, g in grads.items()}


def _conflict_summary(reference: str, steps: list[dict[str, tuple[float, float, float]]]) -> ConflictSummary:
    names = list(steps[0]) if steps else []
    per_tensor = {n: [cosine(*s[n]) for s in steps] for n in names}
    per_layer: dict[str, list[float]] = {}
    by_type: dict[str, list[float]] = {}
    global_cos, global_dot = [], []
    for products in steps:
        for key, value in pooled_cosines(products, layer_key).items():
            per_layer.setdefault(key, []).append(value)
        for key, value in pooled_cosines(products, tensor_type).items():
            by_type.setdefault(key, []).append(value)
        global_cos.append(pooled_cosines(products)["global"])
        global_dot.append(sum(dot for dot, _, _ in products.values()))
    flat = [c for curve in per_tensor.values() for c in curve if not math.isnan(c)]
    return ConflictSummary(
        reference=reference,
        steps=len(steps),
        global_cosine=global_cos,
        global_dot=global_dot,
        gate_fire_rate=fire_rate(global_dot),
        negative_share=sum(1 for c in flat if c < 0) / len(flat) if flat else math.nan,
        per_tensor=per_tensor,
        per_layer=per_layer,
        by_type=by_type,
    )


def analyze(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    utility_examples: Any,
    safety_examples: Sequence[Any] | None = None,
    spf_example: Any | None = None,
    rank: int = 20,
    n_batches: int = 4,
    batch_size: int = 8,
    n_safety_batch: int = 8,
    category_batch: int = 4,
    max_categories: int | None = None,
    targets: str | Sequence[str] = "all",
    max_length: int = 256,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    thresholds: FindingThresholds | None = None,
    out_dir: str | os.PathLike | None = None,
    plots: bool = True,
    progress: bool = False,
    model_name: str | None = None,
) -> AnalysisResult:
    """Measure the paper's three findings (SPF.md) on ``model`` and return the numbers.

    Args:
        utility_examples: a utility source (``gsm8k``, ``sst2``, a training task such as ``spftune-synthetic``, or
            a .jsonl/.json/.csv file) or a list of ``{prompt, response}`` dicts.
        safety_examples: ``{prompt, refusal[, category]}`` dicts (or :class:`SafetyExample`); default: the harmful
            train split (10 categories). Categories enable the category transfer matrix.
        spf_example: the single safety example (SPF's); default :data:`spftune.core.config.DEFAULT_SAFETY_EXAMPLE`.
        rank: k of the bases and largest k of the CER and overlap curves.
        n_batches, batch_size: the utility stream (conflict cosines); the first batch gives the utility CER.
        n_safety_batch: size of the safety batch (finding 1's safety CER, finding 3's batch basis).
        category_batch: batch size per category of the transfer matrix; ``max_categories`` caps the number of
            categories (0 skips the matrix, None takes all).
        targets: ``"all"`` or regexes over parameter names (:func:`spftune.core.targets.select_parameters`).
        out_dir: if given, writes ``analysis.json``, ``analysis.md`` and (``plots``) the PNG plots there.

    Raises ``ValueError`` (one line, naming the input) for a bad setting, an unknown utility source or empty data.
    """
    rank = _positive_int("rank", rank)
    n_batches = _positive_int("n_batches", n_batches)
    batch_size = _positive_int("batch_size", batch_size)
    n_safety_batch = _positive_int("n_safety_batch", n_safety_batch)
    category_batch = _positive_int("category_batch", category_batch)
    max_length = _positive_int("max_length", max_length, minimum=2)
    if max_categories is not None:
        max_categories = _positive_int("max_categories", max_categories, minimum=0)
    thresholds = thresholds or FindingThresholds()
    clock = _Clock(progress)

    utility, utility_label = _utility_demos(utility_examples, n_batches * batch_size, seed, data_dir)
    single = spf_demo(spf_example)
    if safety_examples is None:
        pool = default_safety_examples()
    else:
        pool = [as_demo(item, f"safety_examples[{i}]") for i, item in enumerate(safety_examples)]
    pool = [d for d in pool if d.prompt != single.prompt]
    if not pool:
        raise ValueError("safety_examples is empty; pass {prompt, refusal} pairs or leave it None for the default set")
    groups = by_category(pool)
    use_categories = len(groups) >= 2 and max_categories != 0
    # The first example of each category is held out of the batch (it is that category's single example), whether
    # or not the transfer matrix is computed, so the batch does not depend on that setting.
    safety_batch = round_robin(groups, n_safety_batch, skip_first=True) if groups else []
    if not safety_batch:
        safety_batch = pool[:n_safety_batch]
    params = select_parameters(model, targets)
    clock.lap("load data")

    # 1. The single example SPF would use.
    g_single, loss_single, tok_single = _capture(model, tokenizer, [single], params, max_length, "SPF safety")
    cer_single, u_single = spectra(g_single, rank, rank)
    norm_single = _norms(g_single)
    clock.lap("single safety example")

    # 2. A batch of safety examples.
    g_batch, loss_batch, tok_batch = _capture(model, tokenizer, safety_batch, params, max_length, "safety")
    cer_batch, u_batch = spectra(g_batch, rank, rank)
    norm_batch = _norms(g_batch)
    overlap = {name: overlap_curve(u_single[name], u_batch[name], rank) for name in u_single if name in u_batch}
    shapes = {name: matrix_shape(g.shape) for name, g in g_batch.items() if name in overlap}
    chance_curves = [chance_overlap(m, rank) for m, _ in shapes.values()]
    chance = [sum(c) / len(c) for c in zip(*chance_curves)] if chance_curves else [math.nan] * rank
    clock.lap("safety batch")

    # 3. The utility stream.
    steps_single, steps_batch = [], []
    cer_utility: dict[str, list[float]] = {}
    utility_tokens, utility_losses = [], []

    def add_spectrum(name: str, g: torch.Tensor) -> None:
        # Utility CER needs singular values only, taken from the dense (m, n) gradient: T_u is large.
        cer_utility[name] = explained_ratio(singular_values(TensorGradient(shape=g.shape, dense=g)), rank)

    for i in range(n_batches):
        demos = utility[i * batch_size : (i + 1) * batch_size]
        if not demos:
            break
        g_u, loss_u, tok_u = _capture(model, tokenizer, demos, params, max_length, "utility")
        utility_tokens.append(tok_u)
        utility_losses.append(loss_u)
        to_single, to_batch = tensor_products(
            g_u, [g_single, g_batch], [norm_single, norm_batch],
            visit_dense=add_spectrum if i == 0 else None, visit=lambda name, g=g_u: is_matrix(g[name].shape),
        )
        steps_single.append(to_single)
        steps_batch.append(to_batch)
        del g_u
        clock.lap(f"utility batch {i + 1}")
    del g_single, g_batch

    # 4. Harm categories: one example of category i against a batch of category j.
    transfer = None
    per_single: dict[str, float] = {}
    if use_categories:
        cats = [c for c, members in groups.items() if len(members) >= 2][: max_categories or None]
        singles: dict[str, dict[str, torch.Tensor]] = {}
        for cat in cats:
            g, _, _ = _capture(model, tokenizer, groups[cat][:1], params, max_length, f"category {cat}")
            singles[cat] = subspace_bases(g, rank)
            per_single[cat] = mean_overlap(singles[cat], u_batch, rank)
            del g
        matrix = [[math.nan] * len(cats) for _ in cats]
        for j, cat in enumerate(cats):
            g, _, _ = _capture(
                model, tokenizer, groups[cat][1 : 1 + category_batch], params, max_length, f"category {cat}"
            )
            bases = subspace_bases(g, rank)
            del g
            for i, other in enumerate(cats):
                matrix[i][j] = mean_overlap(singles[other], bases, rank)
        transfer = CategoryTransfer(categories=cats, k=rank, batch_size=category_batch, matrix=matrix)
        clock.lap("category transfer")

    cer_s = CurveSummary.from_per_tensor(cer_batch, rank, tokens=tok_batch, examples=len(safety_batch), loss=loss_batch)
    cer_u = CurveSummary.from_per_tensor(
        cer_utility, rank, tokens=utility_tokens[0], examples=len(utility[:batch_size]), loss=utility_losses[0]
    )
    cer_1 = CurveSummary.from_per_tensor(cer_single, rank, tokens=tok_single, examples=1, loss=loss_single)
    overlap_summary = OverlapSummary(
        curve=CurveSummary.from_per_tensor(overlap, rank),
        chance=chance,
        single=single.prompt,
        batch_size=len(safety_batch),
        per_single=per_single,
    )
    conflict = _conflict_summary("spf_example", steps_single)
    conflict_batch = _conflict_summary("safety_batch", steps_batch)
    findings = judge(cer_s, cer_u, conflict, overlap_summary, rank, thresholds, conflict_batch=conflict_batch)
    clock.lap("summaries")
    settings = {
        "model": model_name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__,
        "utility": utility_label,
        "rank": rank,
        "n_batches": len(utility_tokens),
        "batch_size": batch_size,
        "n_safety_batch": len(safety_batch),
        "category_batch": category_batch,
        "max_categories": max_categories,
        "targets": targets if isinstance(targets, str) else list(targets),
        "max_length": max_length,
        "seed": seed,
        "tensors": len(params),
        "weight_matrices": len(cer_batch),
        "spf_example": {"prompt": single.prompt, "refusal": single.response},
        "utility_tokens": utility_tokens,
        "utility_losses": utility_losses,
        "safety_batch_prompts": [d.prompt for d in safety_batch],
        "torch_threads": torch.get_num_threads(),
        "thresholds": vars(thresholds),
    }
    result = AnalysisResult(
        settings=settings,
        cer_safety=cer_s,
        cer_utility=cer_u,
        cer_safety_single=cer_1,
        conflict=conflict,
        conflict_batch=conflict_batch,
        overlap=overlap_summary,
        category_transfer=transfer,
        findings=findings,
        timings={},
    )
    result.timings = {**clock.stages, "total": time.perf_counter() - clock.start}
    if out_dir is not None:
        write_outputs(result, Path(out_dir), plots=plots)
        clock.lap("write outputs")
        result.timings = {**clock.stages, "total": time.perf_counter() - clock.start}
        _write_json(result, Path(out_dir))  # again, with the writing time included
    return result


def _write_json(result: AnalysisResult, out: Path) -> Path:
    import json

    from spftune.models import write_text_atomic

    path = out / "analysis.json"
    write_text_atomic(path, json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")
    return path


def write_outputs(result: AnalysisResult, out: Path, *, plots: bool = True) -> dict[str, str]:
    """Write ``analysis.json``, the PNG plots (if ``plots``) and ``analysis.md`` into ``out``; returns the paths."""
    from spftune.analysis.markdown import render_markdown
    from spftune.models import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if plots:
        from spftune.analysis.plots import plot_all

        files.update({k: str(v) for k, v in plot_all(result, out).items()})
    files["json"] = str(out / "analysis.json")
    files["markdown"] = str(out / "analysis.md")
    result.files = files
    _write_json(result, out)
    write_text_atomic(out / "analysis.md", render_markdown(result))
    return files
