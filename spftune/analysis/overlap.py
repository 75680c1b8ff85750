"""Finding 3 (one sample is enough): overlap of the basis from one safety example with the basis from a batch.

overlap(U_1, U_2) = ||U_1^T U_2||_F^2 / min(k_1, k_2) (:func:`spftune.core.basis.subspace_overlap`), 1 for equal
subspaces, 0 for orthogonal ones, and k / m in expectation for a random k-dimensional subspace of R^m (the chance
level reported next to it).
"""

from __future__ import annotations

import math

import torch

from spftune.core.basis import subspace_overlap


def overlap_curve(u1: torch.Tensor, u2: torch.Tensor, k_max: int) -> list[float]:
    """overlap(U_1[:, :k], U_2[:, :k]) for k = 1..k_max; NaN where either basis is empty (a zero gradient).

    u1 (m, k_1), u2 (m, k_2) with orthonormal columns, sorted by singular value. For k beyond a basis' rank the
    basis stays at its rank (min(k_1, k_2) divides).
    """
    out = []
    for k in range(1, k_max + 1):
        a, b = u1[:, :k], u2[:, :k]
        out.append(subspace_overlap(a, b) if a.shape[1] and b.shape[1] else math.nan)
    return out


def chance_overlap(m: int, k_max: int) -> list[float]:
    """Expected overlap of two independent uniformly random k-dimensional subspaces of R^m: k / m."""
    return [min(k, m) / m for k in range(1, k_max + 1)]


def mean_overlap(bases_1: dict[str, torch.Tensor], bases_2: dict[str, torch.Tensor], k: int) -> float:
    """Mean over the tensors both hold of overlap(U_1[:, :k], U_2[:, :k]); NaN entries skipped."""
    values = [
        subspace_overlap(bases_1[name][:, :k], bases_2[name][:, :k])
        for name in bases_1
        if name in bases_2 and bases_1[name].shape[1] and bases_2[name].shape[1]
    ]
    return sum(values) / len(values) if values else math.nan
