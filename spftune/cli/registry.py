"""Subcommands register themselves: a module in :mod:`spftune.cli.commands` that calls :func:`register_command`
is picked up by ``spftune`` without any change elsewhere (the diagnostics and baselines issues add theirs so)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None


_COMMANDS: dict[str, Command] = {}


def register_command(
    name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None], description: str | None = None
) -> Callable[[Callable[[argparse.Namespace], int | None]], Callable[[argparse.Namespace], int | None]]:
    """Decorator on ``run(args) -> exit code``: register subcommand ``name`` whose flags ``arguments`` adds."""

    def deco(run: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int | None]:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} is already registered")
        _COMMANDS[name] = Command(name, help, arguments, run, description)
        return run

    return deco


def load_commands() -> dict[str, Command]:
    """Import every module of :mod:`spftune.cli.commands` (each registers its commands) and return the registry."""
    from spftune.cli import commands

    for info in pkgutil.iter_modules(commands.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}")
    return dict(sorted(_COMMANDS.items()))
