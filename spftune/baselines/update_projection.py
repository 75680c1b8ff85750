"""``spf-update``: the SPF projection applied to the optimizer's final update instead of the raw gradient.

SPF removes the safety subspace from the gradient, but AdamW then rescales each coordinate by its second moment,
adds momentum from earlier steps and weight decay, so the applied update ``Δ = θ_new - θ_old`` is not orthogonal to
the safety subspace. This method projects Δ itself. One optimizer step, with U_b (m, k_b) the top-k left singular
basis of the safety gradient G_s^b at θ_old (the same weights where SPF takes it):

    after_backward:  fresh bases at θ_old (every ``refresh_every`` steps), snapshot θ_old of the covered tensors
    optimizer.step:  θ_new (the loop's clip and step, unchanged)
    after_step:      e = θ_old - θ_new = -Δ, the "effective gradient" (a descent step moves along -e)
                     gate on c = sum_b <e_b, G_s^b> < 0 (the update climbs the safety loss), as SPF gates G_u
                     e_b <- e_b - U_b (U_b^T e_b)   (:func:`spftune.core.projection.project_gradients_`)
                     θ <- θ_old - e                 so U_b^T (θ_old - θ) = 0 on projected steps

Adam's moment estimates still contain the removed directions (only the applied step is filtered), so later updates
keep trying to move there and keep being projected; that is the design, not a leak.

Cost: one copy of every covered tensor (the snapshot; full fine-tuning of a 135M model in float32: +0.54 GB, a 7B
model in bf16: +14 GB; with LoRA only the adapters), plus the safety pass SPF pays anyway. The projection itself
reuses the snapshot's memory. Writing θ_old - (θ_old - θ_new) back on a step the gate lets through reproduces θ_new
exactly whenever the two are within a factor of 2 (Sterbenz), i.e. everywhere but on weights crossing zero, where it
is off by at most half an ulp.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from spftune.baselines.options import SPF_FLAGS_HINT, parse_options
from spftune.core.config import SPFConfig
from spftune.core.projection import project_gradients_
from spftune.train.methods import register_method


@register_method("spf-update")
class SPFUpdate:
    """SPF on the applied parameter update (see the module docstring); every ``--spf-*`` option applies."""

    name = "spf-update"

    def __init__(self, spf_config: SPFConfig | None = None, **options: Any) -> None:
        parse_options(self.name, options, {}, hint=SPF_FLAGS_HINT)
        self.config = spf_config if spf_config is not None else SPFConfig()
        self.filter = None
        self._before: dict[str, torch.Tensor] | None = None
        self._refresh_seconds = 0.0
        self.snapshot_bytes = 0

    def setup(self, model: Any, tokenizer: Any) -> None:
        from spftune.core import SPFFilter

        self.filter = SPFFilter(model, tokenizer, self.config)

    def after_backward(self, model: Any, step: int) -> dict[str, Any]:
        start = time.perf_counter()
        f = self.filter
        refreshed = f.bases is None or f.step % self.config.refresh_every == 0
        if refreshed:
            f.refresh()
        f.step += 1
        self._before = {n: p.detach().clone() for n, p in f.params.items()}  # θ_old
        self.snapshot_bytes = sum(t.numel() * t.element_size() for t in self._before.values())
        self._refresh_seconds = time.perf_counter() - start
        return {"spf_refreshed": refreshed, "spf_safety_loss": f.safety_loss}

    @torch.no_grad()
    def after_step(self, model: Any, step: int) -> dict[str, Any]:
        start = time.perf_counter()
        before, self._before = self._before, None
        effective = {}
        for name, p in self.filter.params.items():
            # e = θ_old - θ_new written into the parameter's own storage: no memory beyond the snapshot.
            effective[name] = p.data.sub_(before[name]).neg_()
        stats = project_gradients_(effective, self.filter.bases, gate=self.config.gate, removal=self.config.removal)
        for name, p in self.filter.params.items():
            p.data.neg_().add_(before[name])  # θ = θ_old - e (e projected or not)
        del before
        out = {f"spf_{k}": v for k, v in stats.as_dict().items()}
        out["spf_seconds"] = self._refresh_seconds + time.perf_counter() - start
        return out

    def finish(self, model: Any) -> dict[str, Any]:
        return {"spf_update_snapshot_mb": round(self.snapshot_bytes / 2**20, 1)}
