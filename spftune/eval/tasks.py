"""Tasks: named prompt sets (safety, over-refusal) and utility tasks (prompts with reference answers).

A task is registered under a name with :func:`register_task` on its loader, a function ``(LoadContext) ->
list[Example]``. Three kinds exist:

- ``safety``: harmful prompts; metric = harmful rate (share of responses a judge finds harmful);
- ``overrefusal``: benign prompts, some of them scary-sounding; metric = over-refusal rate (share refused);
- ``utility``: prompts with references and a scorer; metric = accuracy.

Parametrised tasks are registered by prefix (:func:`register_task_prefix`): ``file:PATH`` (a user prompt file) and
``jsonl:PATH`` (a user utility file) build a task from the path at lookup time.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spftune.eval.datasets import DataSource, LoadContext
from spftune.eval.registry import Registry, UnknownNameError

KINDS = ("safety", "overrefusal", "utility")


@dataclass(frozen=True)
class Example:
    """One prompt of a task. ``reference`` is set for utility tasks; ``category`` where the set has categories."""

    prompt: str
    category: str | None = None
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


Loader = Callable[[LoadContext], list[Example]]
Scorer = Callable[[str, str], bool]


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    loader: Loader
    description: str = ""
    scorer: Scorer | None = None  # utility tasks: (prediction, reference) -> correct
    sources: tuple[DataSource, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "utility" and self.scorer is None:
            raise ValueError(f"utility task {self.name!r} needs a scorer")

    def load(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        limit: int | None = None,
        seed: int = 0,
        allow_download: bool = False,
        context: LoadContext | None = None,
    ) -> list[Example]:
        """Load the examples; with ``limit``, a deterministic subsample (by ``seed``) in the original order."""
        ctx = context if context is not None else LoadContext.create(data_dir, allow_download)
        examples = self.loader(ctx)
        if not examples:
            raise ValueError(f"task {self.name!r} has no usable prompts; check its data file")
        if self.kind == "utility" and any(e.reference is None for e in examples):
            raise ValueError(f"utility task {self.name!r} has prompts without a reference answer")
        return subsample(examples, limit, seed)

    def score(self, prediction: str, example: Example) -> bool:
        if self.scorer is None or example.reference is None:
            raise ValueError(f"task {self.name!r} ({self.kind}) has no reference answers to score against")
        return bool(self.scorer(prediction, example.reference))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "sources": [{"relpath": s.relpath, "url": s.url, "sha256": s.sha256, "license": s.license} for s in self.sources],
        }


def subsample(examples: Sequence[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """At most ``limit`` examples, chosen by ``random.Random(seed)``, kept in their original order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise ValueError(f"limit must be a positive number of prompts, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


TASKS: Registry[Task] = Registry("task")
_PREFIXES: dict[str, Callable[[str, str | None], Task]] = {}


def register_task(
    name: str,
    *,
    kind: str,
    description: str = "",
    scorer: Scorer | None = None,
    sources: Sequence[DataSource] = (),
) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader`` as the task ``name``."""

    def register(loader: Loader) -> Loader:
        TASKS.add(name, Task(name, kind, loader, description or (loader.__doc__ or "").strip().split("\n")[0],
                             scorer, tuple(sources)))
        return loader

    return register


def register_task_prefix(prefix: str) -> Callable[[Callable[[str, str | None], Task]], Callable[[str, str | None], Task]]:
    """Decorator: register ``factory(argument, kind)`` for task names of the form ``prefix:argument``."""

    def register(factory: Callable[[str, str | None], Task]) -> Callable[[str, str | None], Task]:
        if prefix in _PREFIXES:
            raise ValueError(f"task prefix {prefix!r} is already registered")
        _PREFIXES[prefix] = factory
        return factory

    return register


def get_task(name: str, kind: str | None = None) -> Task:
    """The task called ``name``; with ``kind``, check that it is of that kind.

    ``kind`` also tells a ``file:PATH`` task whether its prompts are harmful (``safety``) or benign
    (``overrefusal``).
    """
    name = name.strip()
    prefix, sep, argument = name.partition(":")
    if sep and prefix in _PREFIXES:
        if not argument:
            raise ValueError(f"task {name!r} needs a path after '{prefix}:'")
        task = _PREFIXES[prefix](argument, kind)
    elif name in TASKS:
        task = TASKS.get(name)
    else:
        raise UnknownNameError(TASKS.unknown_message(name, extra=tuple(f"{p}:PATH" for p in _PREFIXES)))
    if kind is not None and task.kind != kind:
        raise ValueError(f"{name!r} is a {task.kind} task, not {kind}; pass it in the {task.kind} list instead")
    return task


def list_tasks(kind: str | None = None) -> list[Task]:
    """Registered tasks (optionally of one kind), sorted by name. Prefix tasks are not listed here."""
    return [TASKS.get(n) for n in TASKS.names() if kind is None or TASKS.get(n).kind == kind]


def task_prefixes() -> list[str]:
    return sorted(_PREFIXES)
