"""Training methods, registered by name, plugged into the one training loop through a few hooks.

A method is any object with these hooks (all optional except ``name``; the loop skips a missing hook):

- ``prepare_data(examples) -> examples``: change the training mix before tokenization (e.g. add safety data);
- ``setup(model, tokenizer) -> None``: called once, after LoRA wrapping, before the optimizer is built;
- ``after_backward(model, step) -> dict``: the gradient is complete (accumulated, unscaled) and not yet clipped:
  filter it in place here; the returned statistics go into the step's log record;
- ``after_step(model, step) -> dict``: after ``optimizer.step()``;
- ``finish(model) -> dict``: after the last step, before the checkpoint is written.

Register a factory with ``@register_method("name")``; it is called as ``factory(spf_config=..., **options)``, where
``options`` are the ``--method-options KEY=VALUE`` strings. New methods (mixing, gradient surgery, ...) live in
their own modules and never touch the loop.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from spftune.core.config import SPFConfig


@runtime_checkable
class TrainingMethod(Protocol):
    name: str


_REGISTRY: dict[str, Callable[..., Any]] = {}
# Modules that register more methods on import; loaded on the first lookup so that ``--method mix`` just works.
PLUGIN_MODULES = ["spftune.baselines"]
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib

    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the plugin exists but one of its own imports is missing: say so
                raise


def register_method(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``factory(spf_config=None, **options) -> method`` under ``name``."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if not name or name != name.strip():
            raise ValueError(f"invalid method name {name!r}")
        if name in _REGISTRY:
            raise ValueError(f"training method {name!r} is already registered; pick another name")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_methods() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def make_method(name: str, *, spf_config: SPFConfig | None = None, **options: Any) -> Any:
    """Instantiate the method registered as ``name``; ``ValueError`` with a suggestion for an unknown name."""
    _load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"unknown training method {name!r}; {hint}known: {', '.join(available_methods())}")
    return _REGISTRY[name](spf_config=spf_config, **options)


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"method {name!r} takes no options, got {sorted(options)}")


@register_method("sft")
class SFT:
    """Plain supervised fine-tuning: no hooks."""

    name = "sft"

    def __init__(self, spf_config: SPFConfig | None = None, **options: Any) -> None:
        _no_options(self.name, options)


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        return value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return None  # tensors of several values, lists: not logged per step


@register_method("spf")
class SPF:
    """The SPF gradient filter (:class:`spftune.core.SPFFilter`) applied once per optimizer step, before clipping."""

    name = "spf"

    def __init__(self, spf_config: SPFConfig | None = None, **options: Any) -> None:
        _no_options(self.name, options)
        self.config = spf_config if spf_config is not None else SPFConfig()
        self.filter = None

    def setup(self, model: Any, tokenizer: Any) -> None:
        from spftune.core import SPFFilter

        self.filter = SPFFilter(model, tokenizer, self.config)

    def after_backward(self, model: Any, step: int) -> dict[str, Any]:
        stats = self.filter.apply_() or {}
        out = {}
        for key, value in stats.items():
            value = _scalar(value)
            if value is not None:
                out[f"spf_{key}"] = value
        return out
