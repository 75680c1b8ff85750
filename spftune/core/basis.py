"""The per-tensor safety subspace: top-k left singular vectors of the safety gradient G_s (m, n).

Factored path (exact, no (m, n) matrix is formed): with G_s = A^T B, A (T, m), B (T, n),

    A^T = Q R            Q (m, r) orthonormal columns, R (r, T), r = min(m, T)   (reduced QR)
    C   = R B            (r, n), so G_s = Q C
    C   = U_c S V^T      SVD of the small matrix
    U   = Q U_c[:, :k_b] (m, k_b), the top-k_b left singular vectors of G_s, k_b = min(k, rank G_s)

in O((m + n) T^2) instead of O(m n min(m, n)). Reference path: ``torch.linalg.svd`` of the materialized G_s.

Both keep what the projection needs to evaluate, for a fine-tuning gradient G_u (m, n), the inner product
<G_u, G_s> and the coefficients U^T G_u: factored as P = Q^T G_u (r, n), <G_u, G_s> = <P, C>, U^T G_u = U_c^T P;
dense directly. The side is always the left one (rows = shape[0]); it is stored by construction, never inferred
from the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spftune.core.capture import TensorGradient


@dataclass
class SubspaceBasis:
    """Safety subspace of one tensor. All tensors float32.

    U: (m, k_b) orthonormal columns. safety_coeff: (k_b, n) = U^T G_s. singular_values: (r,) of G_s, descending.
    Factored form: Q (m, r) and C (r, n) with G_s = Q C and U = Q @ Uc, Uc (r, k_b). Dense form: Q = Uc = None and
    C = G_s (m, n).
    """

    U: torch.Tensor
    safety_coeff: torch.Tensor
    singular_values: torch.Tensor
    C: torch.Tensor
    Q: torch.Tensor | None = None
    Uc: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.U.shape[1]

    @property
    def safety_norm_sq(self) -> torch.Tensor:
        # ||G_s||_F^2 = ||C||_F^2 in both forms (Q has orthonormal columns).
        return self.C.pow(2).sum()

    def inner(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(<g, G_s>, U^T g) for a gradient g viewed as (m, n); both float32.

        The matmul runs in g's dtype (no float32 copy of a large low-precision gradient); results are upcast.
        """
        if self.Q is None:
            dot = (self.C * g.float()).sum() if g.dtype == torch.float32 else (self.C.to(g.dtype) * g).float().sum()
            coeff = (self.U.to(g.dtype).T @ g).float()
            return dot, coeff
        p = (self.Q.to(g.dtype).T @ g).float()  # (r, n)
        return (p * self.C).sum(), self.Uc.T @ p


def _rank(s: torch.Tensor, m: int, n: int, rtol: float | None) -> int:
    if s.numel() == 0 or not bool(s[0] > 0):
        return 0
    tol = max(m, n) * torch.finfo(torch.float32).eps if rtol is None else rtol
    return int((s > s[0] * tol).sum())


def fit_basis(grad: TensorGradient, rank: int, rtol: float | None = None) -> SubspaceBasis:
    """Top-``rank`` left singular subspace of one tensor's safety gradient (see module docstring)."""
    m = grad.shape[0] if len(grad.shape) > 0 else 1
    if grad.is_factored and grad.factors:
        a, b = grad.stacked_factors(torch.float32)  # (T, m), (T, n)
        n = b.shape[1]
        q, r = torch.linalg.qr(a.T)  # (m, r0), (r0, T)
        c = r @ b  # (r0, n)
        uc, s, vh = torch.linalg.svd(c, full_matrices=False)
        kb = min(rank, _rank(s, m, n, rtol))
        uc = uc[:, :kb]
        return SubspaceBasis(
            U=q @ uc, safety_coeff=s[:kb, None] * vh[:kb], singular_values=s, C=c, Q=q, Uc=uc
        )
    g = grad.materialize(torch.float32)  # (m, n)
    n = g.shape[1]
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    kb = min(rank, _rank(s, m, n, rtol))
    return SubspaceBasis(U=u[:, :kb].contiguous(), safety_coeff=s[:kb, None] * vh[:kb], singular_values=s, C=g)


def singular_values(grad: TensorGradient) -> torch.Tensor:
    """All singular values of G (descending, float32), computed from the factors when there are any."""
    if grad.is_factored and grad.factors:
        a, b = grad.stacked_factors(torch.float32)
        _, r = torch.linalg.qr(a.T)
        return torch.linalg.svdvals(r @ b)
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
