"""``safegrad``: rank-1 gradient surgery against an alignment gradient (PCGrad-style, as in SafeGrad).

Per optimizer step, with g the fine-tuning gradient of all trainable tensors (complete, unscaled, not yet clipped)
and g_a the gradient of the refusal loss on ``n_examples`` refusal examples at the current weights:

    c = <g, g_a>  (global, summed over every trainable tensor)
    if c < 0:  g <- g - (c / ||g_a||^2) g_a      so that <g, g_a> = 0 afterwards
    else:      g unchanged (not one bit moves)

g_a is taken with :func:`spftune.core.capture.capture_gradients` (``factored=False``: ``torch.autograd.grad``, in
eval mode, under a forked RNG), so ``.grad`` is never touched by it. Cost per refresh: one forward and backward pass
on the refusal batch, and one full-size copy of the trainable gradient (g_a) held for the step (kept between steps
only when ``refresh_every > 1``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from spftune.baselines.options import Option, integer, parse_options
from spftune.baselines.safety_data import refusal_batch
from spftune.core.capture import capture_gradients
from spftune.core.config import SPFConfig
from spftune.train.methods import register_method

SAFEGRAD_OPTIONS = {
    "n_examples": Option(8, integer(1), "refusal examples in the alignment batch, e.g. --method-options n_examples=8"),
    "refresh_every": Option(1, integer(1), "recompute the alignment gradient every N optimizer steps"),
    "max_length": Option(256, integer(2), "token limit of one refusal example"),
    "seed": Option(0, integer(0), "seed of the refusal examples drawn"),
}


def alignment_surgery_(
    grads: dict[str, torch.Tensor], alignment: dict[str, torch.Tensor]
) -> dict[str, float | bool]:
    """Project ``grads`` (name -> gradient, in place) onto the normal plane of ``alignment`` when they conflict.

    Both dicts map names to tensors of equal shapes; names missing from either side are ignored. Returns ``dot``
    (before), ``cosine`` (before), ``conflict`` and ``coefficient`` (the multiple of g_a subtracted, 0 if none).
    """
    names = [n for n in grads if n in alignment]
    if not names:
        return {"conflict": False, "dot": 0.0, "cosine": 0.0, "coefficient": 0.0}
    sums = torch.stack([
        torch.stack([(grads[n].float() * alignment[n].float()).sum(), alignment[n].float().pow(2).sum(),
                     grads[n].float().pow(2).sum()])
        for n in names
    ]).double().sum(0)
    dot, a_sq, g_sq = sums.tolist()  # one host sync
    cosine = dot / (a_sq * g_sq) ** 0.5 if a_sq > 0 and g_sq > 0 else 0.0
    conflict = dot < 0 and a_sq > 0
    coefficient = dot / a_sq if conflict else 0.0
    if conflict:
        for n in names:
            grads[n].sub_(alignment[n].to(grads[n].dtype), alpha=coefficient)
    return {"conflict": conflict, "dot": dot, "cosine": cosine, "coefficient": coefficient}


@register_method("safegrad")
class SafeGrad:
    """Gradient surgery against the refusal-loss gradient (options ``n_examples``, ``refresh_every``, ...)."""

    name = "safegrad"

    def __init__(self, spf_config: SPFConfig | None = None, **options: Any) -> None:
        opts = parse_options(self.name, options, SAFEGRAD_OPTIONS)
        self.n_examples: int = opts["n_examples"]
        self.refresh_every: int = opts["refresh_every"]
        self.max_length: int = opts["max_length"]
        self.seed: int = opts["seed"]
        self.params: dict[str, torch.nn.Parameter] = {}
        self._batch: dict[str, torch.Tensor] | None = None
        self._alignment: dict[str, torch.Tensor] | None = None
        self.alignment_loss: float | None = None
        self.steps = 0
        self.conflicts = 0

    def setup(self, model: Any, tokenizer: Any) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("method 'safegrad': the model has no trainable tensors; unfreeze some or use --lora")
        self._batch = refusal_batch(tokenizer, self.n_examples, seed=self.seed, max_length=self.max_length)

    def refresh(self, model: Any) -> dict[str, torch.Tensor]:
        """g_a at the current weights: name -> tensor of the parameter's shape."""
        device = next(iter(self.params.values())).device
        batch = {k: v.to(device) for k, v in self._batch.items()}
        grads, self.alignment_loss = capture_gradients(model, batch, self.params, factored=False)
        self._alignment = {n: grads[n].dense.reshape(p.shape) for n, p in self.params.items()}
        return self._alignment

    @torch.no_grad()
    def after_backward(self, model: Any, step: int) -> dict[str, Any]:
        start = time.perf_counter()
        refreshed = self._alignment is None or self.steps % self.refresh_every == 0
        if refreshed:
            with torch.enable_grad():
                self.refresh(model)
        grads = {n: p.grad for n, p in self.params.items() if p.grad is not None}
        stats = alignment_surgery_(grads, self._alignment)
        self.steps += 1
        self.conflicts += bool(stats["conflict"])
        if self.refresh_every == 1:
            self._alignment = None  # recomputed next step anyway: do not hold a gradient copy between steps
        out = {f"safegrad_{k}": v for k, v in stats.items()}
        out.update(safegrad_alignment_loss=self.alignment_loss, safegrad_refreshed=refreshed,
                   safegrad_seconds=time.perf_counter() - start)
        return out

    def finish(self, model: Any) -> dict[str, Any]:
        return {"safegrad_conflict_rate": round(self.conflicts / self.steps, 4) if self.steps else None}
