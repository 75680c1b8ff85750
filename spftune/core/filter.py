"""SPFFilter: the SPF gradient filter attached to one model.

Usage in a hand-written loop (one call per optimizer step, on the final gradient)::

    spf = SPFFilter(model, tokenizer, SPFConfig(rank=20))
    for batch in loader:
        loss = model(**batch).loss / accum
        loss.backward()
        if step_is_last_micro_batch:
            scaler.unscale_(optimizer)        # under AMP: unscale first (SPF itself is scale-invariant)
            stats = spf.apply_()              # project G_u against the safety subspace, in place on .grad
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # clip the projected gradient (paper order)
            optimizer.step(); optimizer.zero_grad()

Data parallel (DDP): call it after the gradient all-reduce (after ``backward`` of the last micro-batch); every rank
then holds the same reduced gradient and the same safety example and computes the same projection. Sharded
gradients (FSDP2 / ZeRO-3 DTensor shards) are refused: their inner products need a cross-rank reduction that this
version does not implement.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from spftune.core.basis import RandomBasis, SubspaceBasis, fit_basis
from spftune.core.capture import capture_gradients
from spftune.core.chat import collate, encode_example, pad_token_id
from spftune.core.config import SPFConfig
from spftune.core.projection import project_gradients_
from spftune.core.targets import select_parameters


def build_safety_batch(tokenizer: Any, config: SPFConfig) -> dict[str, torch.Tensor]:
    """Format ``config.safety_examples`` with the tokenizer's chat template; loss on the refusal tokens only."""
    if tokenizer is None:
        raise ValueError(
            "SPFFilter needs a tokenizer to format the safety examples with the chat template "
            "(or pass safety_batch={'input_ids', 'attention_mask', 'labels'} yourself)."
        )
    encoded = []
    for i, ex in enumerate(config.safety_examples):
        try:
            encoded.append(encode_example(tokenizer, ex.prompt, ex.refusal, config.max_length))
        except ValueError as exc:
            raise ValueError(f"SPFConfig.safety_examples[{i}]: {exc}") from None
    return collate(encoded, pad_token_id(tokenizer))


def _check_batch(batch: dict[str, torch.Tensor]) -> None:
    missing = {"input_ids", "labels"} - set(batch)
    if missing:
        raise ValueError(f"safety_batch lacks {sorted(missing)}; it needs input_ids, attention_mask and labels.")
    if not bool((batch["labels"][:, 1:] != -100).any()):
        raise ValueError("safety_batch has no labelled response token (labels are all -100); label the refusal.")


class SPFFilter:
    """Safety-preserving filter of fine-tuning gradients (SPF, arXiv 2601.10141).

    Each call of :meth:`apply_` (once per optimizer step, on the accumulated gradient):

    1. computes the safety gradient G_s of the refusal loss at the current weights (every ``refresh_every`` steps),
       in factored form, and the top-k left singular basis U_b (m, k_b) of every covered tensor;
    2. evaluates the conflict c = sum_b <G_u^b, G_s^b>;
    3. if the gate fires, replaces G_u^b by G_u^b - U_b (U_b^T G_u^b) in place on ``.grad``.

    Returns the step's statistics (see :class:`~spftune.core.projection.ProjectionStats`) plus ``seconds``,
    ``safety_loss`` and ``refreshed``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        config: SPFConfig | None = None,
        *,
        safety_batch: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.config = config if config is not None else SPFConfig()
        self.params = select_parameters(model, self.config.targets)
        batch = safety_batch if safety_batch is not None else build_safety_batch(tokenizer, self.config)
        _check_batch(batch)
        self._batch_cpu = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
        self.bases: dict[str, SubspaceBasis | RandomBasis] | None = None
        self.safety_loss: float | None = None
        self.step = 0
        self.last_stats: dict[str, Any] | None = None
        # The control basis draws from its own stream: drawing from the global one would change dropout and data
        # order, and with them the very run it is meant to be compared with.
        self._generator = torch.Generator().manual_seed(torch.initial_seed()) if self.config.basis == "random" else None

    def _batch(self) -> dict[str, torch.Tensor]:
        device = next(iter(self.params.values())).device
        return {k: v.to(device) for k, v in self._batch_cpu.items()}

    def refresh(self) -> dict[str, SubspaceBasis | RandomBasis]:
        """Recompute the safety gradient and the per-tensor bases at the current weights."""
        grads, self.safety_loss = capture_gradients(
            self.model, self._batch(), self.params, factored=self.config.method == "factored"
        )
        self.bases = {name: fit_basis(g, self.config.rank, self.config.rtol) for name, g in grads.items()}
        if self._generator is not None:
            self.bases = {name: RandomBasis(b, self._generator) for name, b in self.bases.items()}
        return self.bases

    @torch.no_grad()
    def _project(self) -> dict[str, Any]:
        grads = {}
        for name, p in self.params.items():
            if p.grad is None:
                continue
            if type(p.grad) is not torch.Tensor:  # DTensor / sharded gradient
                raise NotImplementedError(
                    f"the gradient of {name} is a {type(p.grad).__name__} (sharded); SPF supports full gradients "
                    "(single device or DDP) in this version."
                )
            grads[name] = p.grad
        return project_gradients_(grads, self.bases, gate=self.config.gate, removal=self.config.removal).as_dict()

    def apply_(self) -> dict[str, Any]:
        """Filter the current ``.grad`` of the covered tensors in place; returns the step's statistics."""
        start = time.perf_counter()
        refreshed = self.bases is None or self.step % self.config.refresh_every == 0
        if refreshed:
            self.refresh()
        stats = self._project()
        self.step += 1
        if self.step % self.config.refresh_every == 0:
            # The next call recomputes the bases: free them now, so they never sit beside the next step's
            # activations (they hold T rows per layer plus a (vocab, T) factor for embeddings).
            self.bases = None
        stats.update(seconds=time.perf_counter() - start, safety_loss=self.safety_loss, refreshed=refreshed)
        self.last_stats = stats
        return stats

    def attach(self, optimizer: torch.optim.Optimizer):
        """Run :meth:`apply_` automatically before every ``optimizer.step()``; returns a removable handle.

        Use it only when the loop clips before the step by itself is acceptable: the hook runs after any clipping
        done before ``step()``. Projection never increases the gradient norm, so a clip bound still holds.
        """

        def hook(optimizer, args, kwargs) -> None:
            self.apply_()

        return optimizer.register_step_pre_hook(hook)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Counters as tensors (safe for ``torch.load(weights_only=True)`` and safetensors); bases are recomputed."""
        return {"step": torch.tensor(self.step, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.step = int(state["step"])
        self.bases = None
