"""Finding 2 (conflict): cosine between a utility gradient and a safety gradient, per tensor and summed.

Both gradients come factored from :func:`spftune.core.capture.capture_gradients` (G = sum_i A_i^T B_i, A_i (T_i, m)
dense or a LongTensor of row ids for an embedding, B_i (T_i, n)). Their Frobenius inner product needs no (m, n)
matrix::

    <A_1^T B_1, A_2^T B_2> = sum((A_1 A_2^T) * (B_1 B_2^T))       a (T_1, T_2) computation

where A_1 A_2^T for id factors is an equality test of the ids, or a column gather of the dense factor. Aggregates
add inner products and squared norms before dividing, so a layer's (or the model's) cosine is the cosine of the
concatenated gradients, which is what SPF's global gate tests: c = sum_b <G_u^b, G_s^b> < 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from spftune.core.capture import TensorGradient


def factor_gram(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """A_1 A_2^T (T_1, T_2) for left factors that are dense (T, m) or row ids (T,) of one-hot rows."""
    if a1.is_floating_point() and a2.is_floating_point():
        return a1.float() @ a2.float().T
    if a1.is_floating_point():  # dense (T_1, m) times one-hot(ids)^T: the columns of a1 at the ids
        return a1.float()[:, a2]
    if a2.is_floating_point():
        return a2.float()[:, a1].T
    return (a1[:, None] == a2[None, :]).float()


def _dense_factored_inner(dense: torch.Tensor, grad: TensorGradient) -> float:
    # <D, A^T B> = sum((A D) * B), or sum(D[ids] * B) for an id factor.
    total = 0.0
    for a, b in grad.factors:
        left = dense[a] if not a.is_floating_point() else a.float() @ dense
        total += float((left * b.float()).sum())
    return total


def gradient_inner(g1: TensorGradient, g2: TensorGradient) -> float:
    """Frobenius inner product <G_1, G_2> of two gradients of the same tensor."""
    if tuple(g1.shape) != tuple(g2.shape):
        raise ValueError(f"gradients of different shapes {tuple(g1.shape)} and {tuple(g2.shape)}")
    if g1.is_factored and g2.is_factored:
        return float(
            sum(
                float((factor_gram(a1, a2) * (b1.float() @ b2.float().T)).sum())
                for a1, b1 in g1.factors
                for a2, b2 in g2.factors
            )
        )
    if g1.is_factored:
        return _dense_factored_inner(g2.materialize(), g1)
    if g2.is_factored:
        return _dense_factored_inner(g1.materialize(), g2)
    return float((g1.materialize() * g2.materialize()).sum())


def gradient_norm_sq(g: TensorGradient) -> float:
    """||G||_F^2."""
    return gradient_inner(g, g)


def cosine(dot: float, norm_sq_1: float, norm_sq_2: float) -> float:
    """dot / (||1|| ||2||); NaN when either gradient is zero."""
    denom = math.sqrt(max(norm_sq_1, 0.0) * max(norm_sq_2, 0.0))
    return dot / denom if denom > 0 else math.nan


def dense_gradient(g: TensorGradient) -> torch.Tensor:
    """G (m, n) in float32; id factors are added as rows (no one-hot matrix)."""
    if not g.is_factored:
        return g.materialize()
    out = None
    for a, b in g.factors:
        if out is None:
            out = torch.zeros(g.rows, b.shape[1], dtype=torch.float32, device=b.device)
        if a.is_floating_point():
            out.addmm_(a.float().T, b.float())
        else:
            out.index_add_(0, a, b.float())
    return out if out is not None else g.materialize()


def _rows(g: TensorGradient) -> int:
    return sum(int(b.shape[0]) for _, b in g.factors) if g.is_factored else 0


def _cheaper_dense(g: TensorGradient, refs: list[TensorGradient]) -> bool:
    # Factored: T_u^2 (m + n) for the norm plus T_u T_s (m + n) per reference. Dense: m n T_u to form G_u, then
    # T_s m n per reference (and m n for the norm). Large utility batches are cheaper dense, one tensor at a time.
    if not g.is_factored:
        return False
    m, n = g.rows, g.factors[0][1].shape[1] if g.factors else 1
    t = _rows(g)
    ref_rows = sum(_rows(r) for r in refs)
    return m * n * (t + ref_rows + 1) < t * (t + ref_rows) * (m + n)


def tensor_products(
    utility: dict[str, TensorGradient],
    references: list[dict[str, TensorGradient]],
    reference_norm_sq: list[dict[str, float]],
    visit_dense: Callable[[str, torch.Tensor], None] | None = None,
    visit: Callable[[str], bool] | None = None,
) -> list[dict[str, tuple[float, float, float]]]:
    """Per reference and tensor (<G_u, G_s>, ||G_u||^2, ||G_s||^2), for the tensors both hold.

    Each utility gradient is formed densely (one tensor at a time) when that is cheaper than the (T_u, T_s) route,
    or when ``visit(name)`` asks for it: then ``visit_dense(name, G_u)`` sees it before it is dropped.
    """
    products: list[dict[str, tuple[float, float, float]]] = [{} for _ in references]
    for name, gu in utility.items():
        refs = [r[name] for r in references if name in r]
        keep = visit_dense is not None and (visit is None or visit(name))
        dense = dense_gradient(gu) if keep or _cheaper_dense(gu, refs) else None
        if dense is not None:
            norm_u = float(dense.double().pow(2).sum())
            view = TensorGradient(shape=gu.shape, dense=dense)
        else:
            norm_u, view = gradient_norm_sq(gu), gu
        for out, ref, norms in zip(products, references, reference_norm_sq):
            if name in ref:
                out[name] = (gradient_inner(view, ref[name]), norm_u, norms[name])
        if keep:
            visit_dense(name, dense)
    return products


def pooled_cosines(
    products: dict[str, tuple[float, float, float]], key: Callable[[str], str] | None = None
) -> dict[str, float]:
    """Cosine per group of tensors (``key(name)``; None = one group ``"global"``), inner products and squared
    norms summed over the group before dividing."""
    sums: dict[str, list[float]] = {}
    for name, (dot, nu, ns) in products.items():
        acc = sums.setdefault("global" if key is None else key(name), [0.0, 0.0, 0.0])
        acc[0] += dot
        acc[1] += nu
        acc[2] += ns
    return {k: cosine(*v) for k, v in sums.items()}


def fire_rate(global_dots: Iterable[float]) -> float:
    """Share of steps on which SPF's global gate fires (c < 0)."""
    dots = list(global_dots)
    return sum(1 for c in dots if c < 0) / len(dots) if dots else math.nan
