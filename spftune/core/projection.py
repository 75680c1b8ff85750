"""The SPF projection of fine-tuning gradients, in place.

For every covered tensor b with fine-tuning gradient G_u^b (m, n) and safety basis U_b (m, k_b):

    c_b = <G_u^b, G_s^b>_F,      c = sum_b c_b
    gate:     global -> project all b iff c < 0;  per_tensor -> project b iff c_b < 0;  always -> all b
    subspace:       G_u^b <- G_u^b - U_b M_b,   M_b = U_b^T G_u^b                      (k_b, n)
    conflict_only:  M_b = U_b^T G_u^b masked to the entries whose sign opposes U_b^T G_s^b

U_b has orthonormal columns, so ||G_u - U M||^2 = ||G_u||^2 - ||M||^2 and <G_s, G_u - U M> = c_b - <U^T G_s, M>:
the statistics come from (k_b, n) coefficient matrices, with no second pass over the gradients. In conflict_only
the subtracted term <U^T G_s, M> is a sum of negative products, so the inner product with the safety gradient can
only grow. The safety gradient itself is never added to the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spftune.core.basis import RandomBasis, SubspaceBasis
from spftune.core.targets import as_matrix


@dataclass
class ProjectionStats:
    """What one projection did. Floats, so it can go straight into a log line."""

    conflict: bool  # c < 0, the paper's conflict test
    projected: bool  # whether any tensor was projected (depends on the gate)
    dot: float
    grad_norm_before: float
    grad_norm_after: float
    removed_fraction: float
    max_cosine_after: float
    projected_tensors: int
    covered_tensors: int

    def as_dict(self) -> dict[str, float | bool | int]:
        return dict(self.__dict__)


def project_gradients_(
    grads: dict[str, torch.Tensor],
    bases: dict[str, SubspaceBasis | RandomBasis],
    *,
    gate: str = "global",
    removal: str = "subspace",
) -> ProjectionStats:
    """Project each ``grads[name]`` (any shape, viewed as (shape[0], -1)) against ``bases[name]`` in place."""
    names = [n for n in grads if n in bases]
    dots, coeffs, norms_sq = {}, {}, {}
    for n in names:
        g = as_matrix(grads[n])
        dots[n], coeffs[n] = bases[n].inner(g)
        norms_sq[n] = torch.linalg.vector_norm(g, dtype=torch.float32).square()  # no squared copy of g
    dev = dots[names[0]].device if names else torch.device("cpu")
    dot_vec = torch.stack([dots[n].to(dev) for n in names]) if names else torch.zeros(0)
    # One host sync per step: the gate is a data-dependent branch and skipping work on non-conflict steps pays.
    dot_list = dot_vec.tolist()
    total_dot = float(sum(dot_list))
    if gate == "global":
        fire = {n: total_dot < 0 for n in names}
    elif gate == "per_tensor":
        fire = {n: d < 0 for n, d in zip(names, dot_list)}
    else:
        fire = dict.fromkeys(names, True)

    removed_sq = []
    cos_after = []
    for n in names:
        if not fire[n] or bases[n].k == 0:
            continue
        basis = bases[n]
        m = coeffs[n]
        if removal == "conflict_only":
            m = m * (m * basis.safety_coeff < 0)
        grad = grads[n]
        if grad.is_contiguous():
            basis.remove_(as_matrix(grad), m)
        else:
            g2 = as_matrix(grad).clone()
            basis.remove_(g2, m)
            grad.copy_(g2.reshape(grad.shape))
        r_sq = m.pow(2).sum()
        removed_sq.append(r_sq)
        after_sq = (norms_sq[n] - r_sq).clamp_min(0)
        dot_after = dots[n] - (basis.safety_coeff * m).sum()
        denom = (basis.safety_norm_sq * after_sq).sqrt()
        cos_after.append(torch.where(denom > 0, dot_after.abs() / denom, torch.zeros_like(denom)))

    zero = torch.zeros((), device=dev)
    before_sq = torch.stack([v.to(dev) for v in norms_sq.values()]).sum() if names else zero
    removed = torch.stack([v.to(dev) for v in removed_sq]).sum() if removed_sq else zero
    max_cos = torch.stack([v.to(dev) for v in cos_after]).max() if cos_after else zero
    before_sq, removed, max_cos = (float(v) for v in torch.stack([before_sq, removed, max_cos]).tolist())
    before = before_sq**0.5
    return ProjectionStats(
        conflict=total_dot < 0,
        projected=bool(removed_sq),
        dot=total_dot,
        grad_norm_before=before,
        grad_norm_after=max(before_sq - removed, 0.0) ** 0.5,
        removed_fraction=(removed**0.5 / before) if before > 0 else 0.0,
        max_cosine_after=max_cos,
        projected_tensors=len(removed_sq),
        covered_tensors=len(names),
    )
