"""SPF for ``transformers.Trainer`` and every trainer built on it (TRL's SFTTrainer, DPOTrainer, ...).

Attach, don't subclass::

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    add_spf_callback(trainer, SPFConfig(rank=20))      # or callbacks=[SPFCallback(SPFConfig(rank=20))]
    trainer.train()

The filter runs in ``on_pre_optimizer_step``: once per optimizer step, after gradient accumulation and (under DDP)
after the all-reduce.

Clipping order: ``Trainer`` clips (``max_grad_norm``) *before* ``on_pre_optimizer_step``, and no callback event lies
between the last backward and the clip. So under the callback the order is clip -> project, where the paper (and
:class:`~spftune.core.SPFFilter` in a hand-written loop) does project -> clip. The projection is an orthogonal
removal, so it never increases the norm: the clipped bound still holds after projection and re-clipping would be a
no-op. The one difference is that on a step where clipping was active, the applied update is shorter than the
paper's by the removed fraction (reported as ``spf/removed_fraction``). Set ``max_grad_norm=0`` and clip yourself if
you need the paper's exact order.

Statistics (averaged since the previous log line) are added to the trainer's logs under ``spf/``:
``conflict_rate``, ``projected_rate``, ``dot``, ``grad_norm_before``, ``grad_norm_after``, ``removed_fraction``,
``max_cosine_after``, ``safety_loss``, ``seconds``. :func:`add_spf_callback` puts the callback first in the list
so that the reporting callbacks (TensorBoard, W&B, ...) see them; passed via ``callbacks=`` the statistics still
reach ``trainer.state.log_history``.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from spftune.core import SPFConfig, SPFFilter

_AVERAGED = (
    "dot",
    "grad_norm_before",
    "grad_norm_after",
    "removed_fraction",
    "max_cosine_after",
    "safety_loss",
    "seconds",
)


class SPFCallback(TrainerCallback):
    """Projects the accumulated gradient once per optimizer step (see the module docstring for clipping)."""

    def __init__(
        self,
        config: SPFConfig | None = None,
        tokenizer: Any = None,
        *,
        safety_batch: dict | None = None,
        prefix: str = "spf/",
    ) -> None:
        self.config = config if config is not None else SPFConfig()
        self.tokenizer = tokenizer
        self.safety_batch = safety_batch
        self.prefix = prefix
        self.filter: SPFFilter | None = None
        self.history: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        tokenizer = self.tokenizer or kwargs.get("tokenizer") or processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor wraps its tokenizer
        if model is None:
            raise ValueError("SPFCallback received no model from the trainer; attach it to a transformers Trainer.")
        self.filter = SPFFilter(model, tokenizer, self.config, safety_batch=self.safety_batch)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        stats = self.filter.apply_()
        self.history.append(stats)
        self._pending.append(stats)

    def summary(self) -> dict[str, float]:
        """Averages of the statistics since the last call (what goes into one log line)."""
        pending, self._pending = self._pending, []
        if not pending:
            return {}
        n = len(pending)
        out = {self.prefix + "conflict_rate": sum(s["conflict"] for s in pending) / n}
        out[self.prefix + "projected_rate"] = sum(s["projected"] for s in pending) / n
        for key in _AVERAGED:
            values = [s[key] for s in pending if s.get(key) is not None]
            if values:
                out[self.prefix + key] = sum(values) / len(values)
        return out

    def on_log(self, args, state, control, logs=None, **kwargs):
        summary = self.summary()
        if not summary or logs is None:
            return
        logs.update(summary)  # seen by the callbacks after this one (reporting integrations)
        # Trainer appended a copy of `logs` to the history just before this event: complete it too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(summary)


def add_spf_callback(trainer, config: SPFConfig | None = None, tokenizer: Any = None, **kwargs) -> SPFCallback:
    """Attach SPF to an existing trainer, ahead of the reporting callbacks; returns the callback."""
    callback = SPFCallback(config, tokenizer, **kwargs)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
