"""``safelora``: post-hoc Safe LoRA (Hsu et al., NeurIPS 2024, arXiv 2405.16833) after LoRA fine-tuning.

For every LoRA layer with frozen (aligned) weight W_aligned (d_out, d_in), the weight W_base of the same layer in the
unaligned base model, and the adapter's update ΔW = s B A (B (d_out, r), A (r, d_in), s = the LoRA scaling):

    V = W_aligned - W_base                    the alignment matrix                       (d_out, d_in)
    C = V V^T / ||V||_F                       the paper's (and its code's) projection    (d_out, d_out)
    cos = <C ΔW, ΔW>_F / (||C ΔW||_F ||ΔW||_F)
    project a chosen layer:                   B <- C B, so that s B A = C ΔW

Layer selection follows the official code: ``select=number`` (its default, and ours) projects the ``num_layers``
(10) layers of lowest cosine; ``select=threshold`` projects every layer with ``cos <= threshold`` (0.5) and leaves
the others untouched. We defaulted to the threshold mode until 2026-12-05: on the default model it projected 87 of the
105 layers with a defined cosine (the cosines ranged 0.17-0.56) and took the task accuracy of the quick grid from 93%
to 0%, which says more about the threshold than about the method.

C is never formed: C B = V (V^T B) / ||V||_F, and the cosine comes from r x r Gram matrices
(<C B A, B A> = tr((C B)^T B A A^T)), so no d_out x d_in product of the adapter is built either.

Note the paper's C is not an orthogonal projector: its eigenvalues are s_i^2 / ||V||_F for the singular values s_i
of V, so C ΔW also rescales ΔW (by at most ||V||_F). The aligned weights are the model being fine-tuned (the frozen
base layers under the adapters); the unaligned ones come from ``base_model`` (default: the project's default model,
which is what ``spftune align`` starts from). A layer whose V is zero, or whose ΔW is zero, has no defined cosine and
is left untouched. Needs ``--lora`` (plain LoRA on linear layers; DoRA is refused). Memory: the base model is loaded
once, in ``finish``, and freed after.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from spftune.baselines.options import Option, choice, closed_interval, integer, parse_options
from spftune.core.config import SPFConfig
from spftune.train.methods import register_method

PEFT_PREFIX = "base_model.model."


def _base_model_option(value: Any) -> Any:
    if value is None or isinstance(value, (nn.Module, Mapping)):
        return value
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return str(value)
    raise ValueError("must be a model path or Hugging Face id (or, from Python, a model or a state dict)")


SAFELORA_OPTIONS = {
    "base_model": Option(None, _base_model_option, "the unaligned base model, e.g. --method-options "
                         "base_model=PATH (default: the project's default model)"),
    "threshold": Option(0.5, closed_interval(-1.0, 1.0), "with select=threshold, project layers whose cosine is "
                        "<= this, e.g. threshold=0.5"),
    "select": Option("number", choice("threshold", "number"), "number (the official code's default): the "
                     "num_layers layers of lowest cosine; threshold: every layer with cosine <= threshold"),
    "num_layers": Option(10, integer(1), "layers projected with select=number"),
}


def alignment_projection(v: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """``(C B, cos(C B A, B A))`` for V (m, n), B (m, r), A (r, n), C = V V^T / ||V||_F; ``(None, nan)`` if V = 0.

    C B is returned in B's dtype; the cosine is nan when B A = 0.
    """
    v = v.float()
    v_norm = v.norm()
    if not bool(v_norm > 0):
        return None, math.nan
    b32 = b.detach().float()
    cb = v @ (v.T @ b32) / v_norm  # (m, r)
    a64, b64, cb64 = a.detach().double(), b32.double(), cb.double()
    gram = a64 @ a64.T  # (r, r), symmetric: tr(X G) = sum(X * G)
    inner = ((cb64.T @ b64) * gram).sum()
    norm_c = ((cb64.T @ cb64) * gram).sum()
    norm_d = ((b64.T @ b64) * gram).sum()
    denom = float((norm_c * norm_d).clamp_min(0).sqrt())
    cosine = float(inner) / denom if denom > 0 else math.nan
    return cb.to(b.dtype), cosine


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(module name, LoRA layer, adapter name)`` for every active adapter of every PEFT LoRA linear layer."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A and isinstance(module.lora_A[adapter], nn.Linear):
                yield name, module, adapter


def base_weight_key(module_name: str) -> str:
    """The key of a LoRA layer's weight in the plain (unwrapped) model's state dict."""
    name = module_name[len(PEFT_PREFIX):] if module_name.startswith(PEFT_PREFIX) else module_name
    return f"{name}.weight"


@register_method("safelora")
class SafeLoRA:
    """Post-hoc Safe LoRA projection of LoRA layers (options ``base_model``, ``threshold``, ``select``, ...)."""

    name = "safelora"

    def __init__(self, spf_config: SPFConfig | None = None, **options: Any) -> None:
        opts = parse_options(self.name, options, SAFELORA_OPTIONS)
        self.base_model = opts["base_model"]
        self.threshold: float = opts["threshold"]
        self.select: str = opts["select"]
        self.num_layers: int = opts["num_layers"]
        self.layers: list[dict[str, Any]] = []

    def setup(self, model: nn.Module, tokenizer: Any) -> None:
        layers = list(lora_layers(model))
        if not layers:
            raise ValueError("method 'safelora' projects LoRA adapters, but the model has none; train with --lora "
                             "(or use another method for full fine-tuning)")
        dora = [name for name, module, adapter in layers if getattr(module, "use_dora", {}).get(adapter)]
        if dora:
            raise ValueError(f"method 'safelora' does not support DoRA adapters ({dora[0]}); use plain LoRA")
        if self.base_model is None or isinstance(self.base_model, str):
            from spftune.models import resolve_model

            resolve_model(self.base_model)  # a wrong path fails now, not after training

    def _base_weights(self) -> Mapping[str, torch.Tensor]:
        if isinstance(self.base_model, Mapping):
            return self.base_model
        if isinstance(self.base_model, nn.Module):
            return self.base_model.state_dict()
        from spftune.models import load_model_and_tokenizer

        return load_model_and_tokenizer(self.base_model)[0].state_dict()

    @torch.no_grad()
    def finish(self, model: nn.Module) -> dict[str, Any]:
        base = self._base_weights()
        candidates = []
        for name, module, adapter in lora_layers(model):
            key = base_weight_key(name)
            if key not in base:
                raise ValueError(f"method 'safelora': the base model has no weight {key!r} for LoRA layer {name}; "
                                 "base_model must have the architecture of the model being fine-tuned")
            aligned = module.get_base_layer().weight
            if base[key].shape != aligned.shape:
                raise ValueError(f"method 'safelora': base weight {key!r} has shape {tuple(base[key].shape)}, the "
                                 f"aligned one {tuple(aligned.shape)}; base_model must match the fine-tuned model")
            v = aligned.float() - base[key].to(aligned.device).float()
            if getattr(module, "fan_in_fan_out", False):
                v = v.T  # Conv1D-style layers store (d_in, d_out); LoRA's B A is (d_out, d_in)
            lora_b = module.lora_B[adapter].weight
            projected_b, cosine = alignment_projection(v, lora_b, module.lora_A[adapter].weight)
            candidates.append((name, adapter, lora_b, projected_b, cosine))
        del base

        finite = [c for c in candidates if not math.isnan(c[4])]
        if self.select == "number":
            chosen = {id(c[2]) for c in sorted(finite, key=lambda c: c[4])[: self.num_layers]}
        else:
            chosen = {id(c[2]) for c in finite if c[4] <= self.threshold}
        self.layers = []
        for name, adapter, lora_b, projected_b, cosine in candidates:
            project = id(lora_b) in chosen
            if project:
                lora_b.copy_(projected_b)
            self.layers.append({"layer": name, "adapter": adapter, "cosine": cosine, "projected": project})
        cosines = [c[4] for c in finite]
        return {
            "safelora_layers": len(candidates),
            "safelora_projected": len(chosen),
            "safelora_undefined": len(candidates) - len(finite),
            "safelora_cosine_min": round(min(cosines), 6) if cosines else None,
            "safelora_cosine_median": round(statistics.median(cosines), 6) if cosines else None,
            "safelora_cosine_max": round(max(cosines), 6) if cosines else None,
        }
