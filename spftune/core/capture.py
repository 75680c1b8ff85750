"""Capture of a loss gradient per tensor, in factored form where the layer allows it.

For an ``nn.Linear`` with weight W (d_out, d_in), the gradient of a loss over T token positions is a sum of outer
products::

    G = sum_t delta_t x_t^T = D^T X        D: (T, d_out) output-gradients,  X: (T, d_in) layer inputs

and for an ``nn.Embedding`` with weight E (V, d) it is ``G = H^T D`` with H (T, V) the one-hot rows of the token ids
and D (T, d) the output-gradients. A tensor used by several such modules (tied input/output embeddings) gets the
sum, i.e. the factor pairs concatenated along T. So one forward pass with hooks that keep each layer's input, and one
``torch.autograd.grad`` of the loss with respect to the layer *outputs*, give every gradient as ``A^T B`` with only
T rows per factor, without touching any parameter's ``.grad``. Tensors that are not the weight of such a module
(norms, biases, convolutions, custom layers) are materialized directly by the same ``autograd.grad`` call.

The pass runs in eval mode (no dropout: the basis is a deterministic function of the weights), with gradient
checkpointing switched off on modules that expose it (checkpointed segments would not keep their outputs in the
graph), under a forked RNG, and restores all of that on exit.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from spftune.core.chat import loss_window, response_loss
from spftune.core.targets import as_matrix


@dataclass
class TensorGradient:
    """The gradient of one tensor, viewed as the matrix (m, n) = (shape[0], prod(shape[1:])).

    Either ``factors``: pairs (A, B) with ``G = sum_i A_i^T B_i``, B_i (T_i, n) and A_i either a dense (T_i, m)
    matrix or, for an embedding, a LongTensor (T_i,) of row indices standing for its one-hot rows; or ``dense``:
    G itself (m, n).
    """

    shape: torch.Size
    factors: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    dense: torch.Tensor | None = None

    @property
    def is_factored(self) -> bool:
        return self.dense is None

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 0 else 1

    @property
    def is_row_sparse(self) -> bool:
        """True when every factor is an index factor (an untied embedding): G is nonzero on few rows only."""
        return bool(self.factors) and all(not a.is_floating_point() for a, _ in self.factors)

    def index_factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (T,), B (T, n)) of a row-sparse gradient: G = onehot(ids)^T B."""
        ids = torch.cat([a for a, _ in self.factors])
        b = torch.cat([b for _, b in self.factors]).to(dtype)
        return ids, b

    def stacked_factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (T, m), B (T, n)) with all factor pairs concatenated along T (index factors made one-hot)."""
        if len(self.factors) == 1 and self.factors[0][0].is_floating_point():  # the common case: no copy to make
            return self.factors[0][0].to(dtype), self.factors[0][1].to(dtype)
        a = torch.cat(
            [
                f[0].to(dtype) if f[0].is_floating_point() else nn.functional.one_hot(f[0], self.rows).to(dtype)
                for f in self.factors
            ]
        )
        b = torch.cat([f[1] for f in self.factors]).to(dtype)
        return a, b

    def materialize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """G as a dense (m, n) matrix."""
        if self.dense is not None:
            return self.dense.to(dtype)
        a, b = self.stacked_factors(dtype)
        return a.T @ b


def _factorable(module: nn.Module, pname: str) -> bool:
    # Exact types only: a subclass may change forward (scaled embeddings, quantized layers), and the factor form
    # holds only for the plain op. Anything else is materialized, which is slower but always right.
    if pname != "weight":
        return False
    if type(module) is nn.Linear:
        return True
    if type(module) is nn.Embedding:
        return module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
    return False


def _owners(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[int, list[nn.Module]]:
    wanted = {id(p) for p in params.values()}
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in wanted:
                owners.setdefault(id(p), []).append((module, pname))
    return owners


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Eval mode, checkpointing off, RNG forked, grad enabled; everything restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    # Instance attribute set by transformers' gradient_checkpointing_enable (read from __dict__: on some versions
    # the class exposes deprecated properties of similar names).
    ckpt = [m for m in model.modules() if m.__dict__.get("gradient_checkpointing") is True]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices, enabled=True), torch.enable_grad():
            model.eval()
            for m in ckpt:
                m.gradient_checkpointing = False
            yield
    finally:
        for m, training in modes:
            m.training = training
        for m in ckpt:
            m.gradient_checkpointing = True


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` (or the model a ``**kwargs`` wrapper such as PEFT's forwards to) names ``name``."""
    return name in _forward_params(model)[0]


def _forward_params(model: nn.Module) -> tuple[set[str], bool]:
    """Named parameters of ``model.forward`` and whether it takes ``**kwargs``.

    A wrapper that forwards ``**kwargs`` (PEFT's ``PeftModel``) is looked through to the model it wraps, so that an
    argument the inner model does not know is never passed.
    """
    seen = 0
    while True:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return set(), False
        names = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        takes_any = len(names) < len(params)
        inner = getattr(model, "get_base_model", None)
        if not takes_any or not callable(inner) or seen > 4:
            return names, takes_any
        inner_model = inner()
        if inner_model is model:
            return names, takes_any
        model, seen = inner_model, seen + 1


def _forward_kwargs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """Arguments of the safety forward.

    When the model takes ``logits_to_keep`` (every causal LM of recent transformers) only the positions from the one
    before the first labelled token onward go through the output head: the prompt positions carry no loss, and on
    a (T, d) x (d, V) head with V ~ 50k that product is a visible part of the safety pass.
    """
    names, takes_any = _forward_params(model)
    kwargs = {"input_ids": batch["input_ids"]}
    if "attention_mask" in batch and ("attention_mask" in names or takes_any):
        kwargs["attention_mask"] = batch["attention_mask"]
    if "use_cache" in names or takes_any:
        kwargs["use_cache"] = False  # no KV cache is needed for one training-style pass
    window = loss_window(batch["labels"]) if "logits_to_keep" in names else 0
    if window:
        kwargs["logits_to_keep"] = window
    return kwargs


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def capture_gradients(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    params: dict[str, nn.Parameter],
    *,
    factored: bool = True,
) -> tuple[dict[str, TensorGradient], float]:
    """Gradient of the response loss on ``batch`` for each tensor in ``params``; ``.grad`` is left untouched.

    batch: ``input_ids``, ``attention_mask``, ``labels`` of shape (B, T) (labels = -100 off the response).
    Returns (name -> TensorGradient, loss value). With ``factored=False`` every gradient is materialized (the
    reference path, a second full backward).
    """
    owners = _owners(model, params)
    factor_names: dict[int, str] = {}
    dense_names: dict[int, str] = {}
    for name, p in params.items():
        mods = owners.get(id(p), [])
        if factored and mods and all(_factorable(m, pn) for m, pn in mods):
            factor_names[id(p)] = name
        else:
            dense_names[id(p)] = name

    records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # (module, input, output) per call

    def keep(module, inputs, output):
        records.append((module, inputs[0], output))

    hooked: dict[int, nn.Module] = {}
    for pid in factor_names:
        for module, _ in owners[pid]:
            hooked[id(module)] = module
    handles = [m.register_forward_hook(keep) for m in hooked.values()]
    try:
        with preserved_state(model):
            out = model(**_forward_kwargs(model, batch))
            loss = response_loss(_logits(out), batch["labels"])
            for module, _, output in records:
                if not output.requires_grad:
                    raise RuntimeError(
                        f"the output of {type(module).__name__} does not require grad during the safety pass; "
                        "SPF needs the safety pass to build a graph (is the model frozen or run under no_grad?)."
                    )
            dense_params = [p for p in params.values() if id(p) in dense_names]
            wrt = [r[2] for r in records] + dense_params
            grads = torch.autograd.grad(loss, wrt, allow_unused=True) if wrt else ()
    finally:
        for h in handles:
            h.remove()

    result: dict[str, TensorGradient] = {}
    out_grads = grads[: len(records)]
    for (module, x, _), d in zip(records, out_grads):
        if d is None:
            continue
        p = module.weight
        name = factor_names[id(p)]
        tg = result.setdefault(name, TensorGradient(shape=p.shape))
        d = d.detach().reshape(-1, d.shape[-1])
        if type(module) is nn.Linear:
            a, b = d, x.detach().reshape(-1, x.shape[-1])  # G (d_out, d_in) = D^T X
        else:
            ids = x.detach().reshape(-1)
            if module.padding_idx is not None:
                d = d * (ids != module.padding_idx).unsqueeze(1).to(d.dtype)  # embedding backward drops pad rows
            # G (V, d) = H^T D with H the one-hot rows of the ids, kept as the ids themselves.
            a, b = ids, d
        # Positions after the last labelled token carry no gradient. With one example (or right padding) they are a
        # suffix: slicing keeps views; a boolean index would copy both factors of every layer.
        live = d.abs().amax(dim=1) > 0
        n_live = int(live.sum())
        if n_live < live.numel():
            a, b = (a[:n_live], b[:n_live]) if bool(live[:n_live].all()) else (a[live], b[live])
        tg.factors.append((a, b))
    dense_list = [p for p in params.values() if id(p) in dense_names]
    for p, g in zip(dense_list, grads[len(records):]):
        name = dense_names[id(p)]
        result[name] = TensorGradient(shape=p.shape, dense=as_matrix(torch.zeros_like(p) if g is None else g.detach()))
    for name, p in params.items():
        result.setdefault(name, TensorGradient(shape=p.shape, dense=as_matrix(torch.zeros_like(p))))
    return result, float(loss.detach())
