"""Which trainable tensors the filter covers."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn


def select_parameters(model: nn.Module, targets: str | Sequence[str] = "all") -> dict[str, nn.Parameter]:
    """Trainable parameters of ``model`` whose names match ``targets``.

    ``targets`` is ``"all"`` or a list of regular expressions tried with ``re.search`` against the names of
    ``model.named_parameters()`` (a tied tensor appears once, under its first name). Raises ``ValueError`` when the
    model has no trainable tensor or when nothing matches, since a filter that covers nothing would silently do
    nothing.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            "the model has no trainable tensors (requires_grad is False everywhere); unfreeze the tensors you "
            "fine-tune, or attach LoRA adapters, before creating the SPF filter."
        )
    if targets == "all":
        return dict(trainable)
    patterns = []
    for t in targets:
        try:
            patterns.append(re.compile(t))
        except re.error as exc:
            raise ValueError(f"SPFConfig.targets entry {t!r} is not a valid regular expression: {exc}.") from None
    chosen = {name: p for name, p in trainable if any(pat.search(name) for pat in patterns)}
    if not chosen:
        sample = ", ".join(name for name, _ in trainable[:4])
        raise ValueError(
            f"SPFConfig.targets {list(targets)} match none of the {len(trainable)} trainable tensors "
            f"(for example: {sample}); use 'all' or regexes over these names."
        )
    return chosen


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a tensor as the matrix (shape[0], -1) that SPF projects; 0-d and 1-d tensors become columns (n, 1)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(t.shape[0], -1)
