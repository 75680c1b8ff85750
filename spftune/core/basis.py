"""The per-tensor safety subspace: top-k left singular vectors of the safety gradient G_s (m, n).

Factored path (exact, no (m, n) matrix is formed): with G_s = A^T B, A (T, m), B (T, n),

    A^T = Q R            Q (m, r) orthonormal columns, R (r, T), r = min(m, T)   (reduced QR)
    C   = R B            (r, n), so G_s = Q C and G_s has the singular values of C
    C C^T = W S^2 W^T    eigendecomposition of an (r, r) Gram matrix, in float64
    U   = Q W[:, :k_b]   (m, k_b), the top-k_b left singular vectors of G_s, k_b = min(k, rank G_s)

in O((m + n) T^2) instead of O(m n min(m, n)). The (r, r) eigenproblem replaces an SVD of the (r, n) matrix C: we
need only left vectors, and float64 keeps the squared spectrum accurate far below the rank cutoff. For an untied
embedding A is one-hot, so Q is a selection of the rows (token ids) that occur, stored as indices: the fine-tuning
gradient is then read and updated on those rows only (a gather and an index_add instead of a (V, d) matmul).

When min(m, n) <= T (LoRA adapters: one side is the LoRA rank) G_s is formed (m n T) and handled densely: it is
then no bigger than its factors, and its SVD is cheaper than the QR.

Reference path: ``torch.linalg.svd`` of the materialized G_s.

Control (``SPFConfig(basis="random")``, for ablations): :class:`RandomBasis` keeps a safety basis's gate quantities
(<G_u, G_s>, ||G_s||) and its size k_b, but removes a uniformly random k_b-dimensional subspace of R^m instead of
the safety directions: given the same gradient, the gate decides alike and as many directions go; only which
ones differs.

Every form keeps what the projection needs to evaluate, for a fine-tuning gradient G_u (m, n), the inner product
<G_u, G_s> and the coefficients U^T G_u: factored as P = Q^T G_u (r, n), <G_u, G_s> = <P, C>, U^T G_u = W_k^T P;
dense directly. The side is always the left one (rows = shape[0]); it is stored by construction, never inferred
from the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spftune.core.capture import TensorGradient


@dataclass
class SubspaceBasis:
    """Safety subspace of one tensor. Floating tensors are float32.

    U: (m, k_b) orthonormal columns. safety_coeff: (k_b, n) = U^T G_s. singular_values: (r,) of G_s, descending.
    C: (r, n) with G_s = Q C, where Q is dense (m, r) (``Q``), a row selection (``rows``: (r,) indices), or the
    identity (both None: then C = G_s itself, (m, n)). Uc: (r, k_b) with U = Q Uc.
    """

    U: torch.Tensor
    safety_coeff: torch.Tensor
    singular_values: torch.Tensor
    C: torch.Tensor
    Q: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    Uc: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.U.shape[1]

    @property
    def safety_norm_sq(self) -> torch.Tensor:
        # ||G_s||_F^2 = ||C||_F^2 in every form (Q has orthonormal columns).
        return self.C.pow(2).sum()

    def _reduced(self, g: torch.Tensor) -> torch.Tensor | None:
        """P = Q^T g (r, n) in float32 for the factored forms; None when G_s is stored densely."""
        if self.rows is not None:
            return g[self.rows].float()
        if self.Q is not None:
            return (self.Q.to(g.dtype).T @ g).float()
        return None

    def _dense_dot(self, g: torch.Tensor) -> torch.Tensor:
        return (self.C.to(g.dtype) * g).float().sum() if g.dtype != torch.float32 else (self.C * g).sum()

    def dot(self, g: torch.Tensor) -> torch.Tensor:
        """<g, G_s> (float32) for a gradient g viewed as (m, n)."""
        p = self._reduced(g)
        return self._dense_dot(g) if p is None else (p * self.C).sum()

    def inner(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(<g, G_s>, U^T g) for a gradient g viewed as (m, n); both float32.

        Matmuls run in g's dtype (no float32 copy of a large low-precision gradient); results are upcast.
        """
        p = self._reduced(g)  # (r, n): both quantities come from the same product
        if p is None:
            return self._dense_dot(g), (self.U.to(g.dtype).T @ g).float()
        return (p * self.C).sum(), self.Uc.T @ p

    def remove_(self, g: torch.Tensor, coeff: torch.Tensor) -> None:
        """g <- g - U coeff, in place; g (m, n) a view of the gradient, coeff (k_b, n)."""
        if self.rows is not None:
            g.index_add_(0, self.rows, (self.Uc @ coeff).to(g.dtype), alpha=-1)
        else:  # addmm_ writes into g: no (m, n) temporary, which matters for (vocab, d) embeddings
            g.addmm_(self.U.to(g.dtype), coeff.to(g.dtype), alpha=-1)

    def transposed_times(self, m: torch.Tensor) -> torch.Tensor:
        """M^T G_s (k, n) for M (m, k), from the stored form of G_s."""
        if self.rows is not None:
            return m[self.rows].T @ self.C
        if self.Q is not None:
            return (self.Q.T @ m).T @ self.C
        return m.T @ self.C


class RandomBasis:
    """A control: a uniformly random orthonormal U (m, k_b) in place of ``safety.U``, same gate quantities.

    ``inner`` returns the true <g, G_s> (so on a given gradient the gate decides as SPF's would) and U^T g for the random U;
    ``safety_coeff`` = U^T G_s keeps the statistics and ``conflict_only`` meaningful. U is the Q factor of an
    (m, k_b) standard normal matrix, whose column space is uniform on the Grassmannian.
    """

    def __init__(self, safety: SubspaceBasis, generator: torch.Generator) -> None:
        m, k = safety.U.shape
        z = torch.randn(m, k, generator=generator, dtype=torch.float32)
        self.U = torch.linalg.qr(z)[0].to(safety.U.device)
        self.safety = safety
        self.safety_coeff = safety.transposed_times(self.U)

    @property
    def k(self) -> int:
        return self.U.shape[1]

    @property
    def safety_norm_sq(self) -> torch.Tensor:
        return self.safety.safety_norm_sq

    def inner(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.safety.dot(g), (self.U.to(g.dtype).T @ g).float()

    def remove_(self, g: torch.Tensor, coeff: torch.Tensor) -> None:
        g.addmm_(self.U.to(g.dtype), coeff.to(g.dtype), alpha=-1)


def _rank(s: torch.Tensor, m: int, n: int, rtol: float | None) -> int:
    if s.numel() == 0 or not bool(s[0] > 0):
        return 0
    tol = max(m, n) * torch.finfo(torch.float32).eps if rtol is None else rtol
    return int((s > s[0] * tol).sum())


def _left_singular(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors W (r, r) and singular values s (r,) of c (r, n), descending, via eigh of c c^T."""
    c64 = c.double()
    evals, evecs = torch.linalg.eigh(c64 @ c64.T)
    return evecs.flip(1).float(), evals.flip(0).clamp_min(0).sqrt().float()


def _materialize_is_cheaper(grad: TensorGradient) -> bool:
    """True when min(m, n) <= T: then G (m, n) is no bigger than the factors and its SVD no dearer than the QR.

    Forming G costs m n T, its SVD m n min(m, n); the factored path costs about (m + n) T^2 for the QR and C, then
    (r0, n) products per step. With a LoRA adapter (min(m, n) = the LoRA rank, 8 or 16, T ~ 100 safety tokens) the
    dense form is several times cheaper; with a full weight (min(m, n) in the hundreds or thousands) the factored
    one is. Both are exact, so the choice changes speed only.
    """
    t = sum(a.shape[0] for a, _ in grad.factors)
    n = grad.factors[0][1].shape[1]
    return min(grad.rows, n) <= t


def fit_basis(grad: TensorGradient, rank: int, rtol: float | None = None) -> SubspaceBasis:
    """Top-``rank`` left singular subspace of one tensor's safety gradient (see module docstring)."""
    m = grad.rows
    if grad.is_factored and grad.is_row_sparse:
        ids, b = grad.index_factors(torch.float32)  # (T,), (T, n)
        rows, inverse = torch.unique(ids, return_inverse=True)
        c = torch.zeros(rows.numel(), b.shape[1], dtype=b.dtype, device=b.device).index_add_(0, inverse, b)
        w, s = _left_singular(c)
        kb = min(rank, _rank(s, m, b.shape[1], rtol))
        uc = w[:, :kb]
        u = torch.zeros(m, kb, dtype=uc.dtype, device=uc.device)
        u[rows] = uc
        return SubspaceBasis(U=u, safety_coeff=uc.T @ c, singular_values=s, C=c, rows=rows, Uc=uc)
    if grad.is_factored and grad.factors and not _materialize_is_cheaper(grad):
        a, b = grad.stacked_factors(torch.float32)  # (T, m), (T, n)
        q, r = torch.linalg.qr(a.T)  # (m, r0), (r0, T)
        c = r @ b  # (r0, n)
        w, s = _left_singular(c)
        kb = min(rank, _rank(s, m, b.shape[1], rtol))
        uc = w[:, :kb]
        return SubspaceBasis(U=q @ uc, safety_coeff=uc.T @ c, singular_values=s, C=c, Q=q, Uc=uc)
    g = grad.materialize(torch.float32)  # (m, n)
    n = g.shape[1]
    if n == 1:  # a column (bias, norm weight): its only left singular vector is itself, normalized
        norm = g.norm()
        kb = min(rank, 1) if bool(norm > 0) else 0
        u = (g / norm)[:, :kb] if kb else g[:, :0]
        return SubspaceBasis(U=u, safety_coeff=norm.reshape(1, 1)[:kb], singular_values=norm.reshape(1), C=g)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    kb = min(rank, _rank(s, m, n, rtol))
    return SubspaceBasis(U=u[:, :kb].contiguous(), safety_coeff=s[:kb, None] * vh[:kb], singular_values=s, C=g)


def singular_values(grad: TensorGradient) -> torch.Tensor:
    """All singular values of G (descending, float32), computed from the factors when there are any."""
    if grad.is_factored and grad.factors:
        return fit_basis(grad, rank=1).singular_values
    return torch.linalg.svdvals(grad.materialize(torch.float32))


def cumulative_explained_ratio(s: torch.Tensor, k_max: int | None = None) -> torch.Tensor:
    """CER(k) = sum_{i<=k} s_i^2 / sum_i s_i^2 for k = 1..k_max; s: (r,) descending. Returns (k_max,).

    Beyond the number of singular values the ratio stays at 1 (or 0 for an all-zero gradient).
    """
    k_max = s.numel() if k_max is None else k_max
    energy = s.float().pow(2)
    total = energy.sum()
    out = torch.zeros(k_max)
    if total <= 0:
        return out
    cum = torch.cumsum(energy, 0) / total
    n = min(k_max, cum.numel())
    out[:n] = cum[:n]
    out[n:] = 1.0
    return out


def subspace_overlap(u1: torch.Tensor, u2: torch.Tensor) -> float:
    """overlap(U1, U2) = ||U1^T U2||_F^2 / min(k1, k2) for orthonormal U1 (m, k1), U2 (m, k2); in [0, 1]."""
    k = min(u1.shape[1], u2.shape[1])
    if k == 0:
        return 0.0
    return float((u1.float().T @ u2.float()).pow(2).sum() / k)
