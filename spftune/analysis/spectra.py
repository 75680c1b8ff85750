"""Finding 1 (low rank): singular values of a gradient per weight matrix and the cumulative explained ratio.

The basis and the spectrum come from :func:`spftune.core.basis.fit_basis` (QR of the left factor, then a small
eigenproblem of size r = min(m, T)), except when the right side is the smaller one: for a tall matrix seen
through many tokens (a tied (V, d) embedding, or ``gate_proj`` (1536, 576) under a utility batch of ~700 tokens)
the same exact computation runs on the other side::

    G = A^T B,  B^T = Q_b R_b     Q_b (n, r), R_b (r, T), r = min(n, T)
    G = (A^T R_b^T) Q_b^T = H Q_b^T      H (m, r), so G has the singular values and left vectors of H
    H^T H = W S^2 W^T  (float64)         U = H W[:, :k] / s[:k]

which costs O((m + n) T r + r^3) with r = min(n, T) instead of r = min(m, T), and never forms the one-hot rows of
an embedding (an ``index_add`` of the rows of R_b^T instead).
"""

from __future__ import annotations

import math

import torch

from spftune.core.basis import cumulative_explained_ratio, fit_basis
from spftune.core.capture import TensorGradient


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """(m, n) of a tensor viewed as a matrix (shape[0], prod(shape[1:])); 0-d and 1-d tensors are columns."""
    if len(shape) == 0:
        return 1, 1
    return int(shape[0]), int(math.prod(shape[1:]))


def is_matrix(shape: torch.Size | tuple[int, ...]) -> bool:
    """True for a weight matrix (both sides > 1); norms, biases and other vectors are not."""
    m, n = matrix_shape(shape)
    return len(shape) >= 2 and m > 1 and n > 1


def token_rows(grad: TensorGradient) -> int | None:
    """T, the number of factor rows (an upper bound on the rank), or None for a materialized gradient."""
    if not grad.is_factored:
        return None
    return sum(int(b.shape[0]) for _, b in grad.factors)


def _rank_cutoff(s: torch.Tensor, m: int, n: int) -> int:
    # The convention of torch.linalg.matrix_rank and of the core: s_i > max(m, n) * eps * s_1.
    if s.numel() == 0 or not bool(s[0] > 0):
        return 0
    return int((s > s[0] * max(m, n) * torch.finfo(torch.float32).eps).sum())


def _basis_from_right(grad: TensorGradient, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = matrix_shape(grad.shape)
    b = torch.cat([f[1] for f in grad.factors]).float()  # (T, n)
    _, rb = torch.linalg.qr(b.T)  # (r, T)
    h = torch.zeros(m, rb.shape[0], dtype=torch.float32, device=b.device)  # (m, r) = A^T R_b^T
    start = 0
    for a, part in grad.factors:
        rows = rb[:, start : start + part.shape[0]].T  # (t, r)
        start += part.shape[0]
        if a.is_floating_point():
            h += a.float().T @ rows
        else:
            h.index_add_(0, a, rows)
    h64 = h.double()
    evals, w = torch.linalg.eigh(h64.T @ h64)  # ascending
    evals, w = evals.flip(0).clamp_min(0), w.flip(1)
    s = evals.sqrt()
    kb = min(rank, _rank_cutoff(s.float(), m, n))
    u = (h64 @ w[:, :kb]) / s[:kb]
    return u.float(), s.float()


def gradient_basis(grad: TensorGradient, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U (m, k_b), s (r,)): top-``rank`` left singular vectors of G and all its singular values, descending.

    k_b = min(rank, numerical rank of G). Exact on both routes (see the module docstring).
    """
    if rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    m, n = matrix_shape(grad.shape)
    rows = token_rows(grad)
    if grad.factors and not grad.is_row_sparse and rows is not None and n < min(m, rows):
        return _basis_from_right(grad, rank)
    basis = fit_basis(grad, rank)
    return basis.U, basis.singular_values


def explained_ratio(s: torch.Tensor, k_max: int) -> list[float]:
    """CER(k) for k = 1..k_max as a list (see :func:`spftune.core.basis.cumulative_explained_ratio`)."""
    return [float(v) for v in cumulative_explained_ratio(s, k_max)]


def spectra(
    grads: dict[str, TensorGradient], rank: int, k_max: int
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """For every weight matrix in ``grads``: CER(1..k_max) and the top-``rank`` left singular basis U (m, k_b).

    Vectors (norms, biases) are skipped: a column has one singular value and CER = 1 trivially.
    """
    cer: dict[str, list[float]] = {}
    bases: dict[str, torch.Tensor] = {}
    for name, grad in grads.items():
        if not is_matrix(grad.shape):
            continue
        u, s = gradient_basis(grad, rank)
        cer[name] = explained_ratio(s, k_max)
        bases[name] = u
    return cer, bases


def subspace_bases(grads: dict[str, TensorGradient], rank: int) -> dict[str, torch.Tensor]:
    """Top-``rank`` left singular basis U (m, k_b) of every weight matrix in ``grads``."""
    return {name: gradient_basis(g, rank)[0] for name, g in grads.items() if is_matrix(g.shape)}
