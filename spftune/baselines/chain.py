"""Several training methods run as one: each hook of the chain calls that hook of every part, in order.

The optax ``chain`` idea for the loop's hooks: ``spf+mix`` is the mixing method's ``prepare_data`` followed by the
SPF filter's ``setup``/``after_backward``, with no code of either copied. Statistics of the parts are merged into one
dict (a later part wins on a clash of keys, which the built-in methods avoid by prefixing their keys).
"""

from __future__ import annotations

from typing import Any


class MethodChain:
    """A training method made of ``parts`` (method objects with any subset of the loop's hooks)."""

    def __init__(self, name: str, *parts: Any) -> None:
        if not parts:
            raise ValueError(f"method chain {name!r} needs at least one part")
        self.name = name
        self.parts = parts

    @property
    def config(self) -> Any:
        """The SPF configuration of the first part that has one (written to the run's ``config.yaml``)."""
        return next((p.config for p in self.parts if getattr(p, "config", None) is not None), None)

    def _each(self, hook: str, *args: Any) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for part in self.parts:
            if hasattr(part, hook):
                stats.update(getattr(part, hook)(*args) or {})
        return stats

    def prepare_data(self, examples: list[dict[str, str]]) -> list[dict[str, str]]:
        for part in self.parts:
            if hasattr(part, "prepare_data"):
                examples = part.prepare_data(examples)
        return examples

    def setup(self, model: Any, tokenizer: Any) -> None:
        self._each("setup", model, tokenizer)

    def after_backward(self, model: Any, step: int) -> dict[str, Any]:
        return self._each("after_backward", model, step)

    def after_step(self, model: Any, step: int) -> dict[str, Any]:
        return self._each("after_step", model, step)

    def finish(self, model: Any) -> dict[str, Any]:
        return self._each("finish", model)
