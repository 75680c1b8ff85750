"""``spftune analyze``: registered here, implemented in :mod:`spftune.analysis.cli`."""

from __future__ import annotations

import argparse

from spftune.analysis.cli import DESCRIPTION, HELP, add_arguments
from spftune.cli.registry import register_command


@register_command("analyze", help=HELP, arguments=add_arguments, description=DESCRIPTION)
def run(args: argparse.Namespace) -> int:
    from spftune.analysis.cli import run as run_analyze

    return run_analyze(args)
