"""Name -> object registries (tasks, judges) filled by decorators, lm-evaluation-harness style.

A lookup of an unknown name raises :class:`UnknownNameError` (a ``ValueError``) that lists the closest registered
names, so a typo on the command line gets a "did you mean" answer instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A task, prompt set or judge name that is not registered."""


class Registry(Generic[T]):
    """A mapping from names to registered objects, with typo suggestions on lookup."""

    def __init__(self, what: str) -> None:
        self.what = what  # e.g. "task", "judge": used in error messages
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        if not name or name != name.strip() or "," in name:
            raise ValueError(f"invalid {self.what} name {name!r}: use a non-empty name without commas or spaces")
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered; pick another name")
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        def register(obj: T) -> T:
            return self.add(name, obj)

        return register

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str, extra: tuple[str, ...] = ()) -> str:
        names = sorted([*self._items, *extra])
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        return f"unknown {self.what} {name!r}; {hint}known: {', '.join(names)}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
