"""The ``spftune`` command line: subcommands built from the config dataclasses, calling the library's functions."""

from spftune.cli.main import main

__all__ = ["main"]
