"""``spftune`` entry point: parse, dispatch, and turn user errors into one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spftune.cli.registry import load_commands

USER_ERRORS = (ValueError, KeyError, OSError, ModuleNotFoundError)
EXIT_USAGE = 2


def one_line(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    message = " ".join(str(message).split())
    return message or type(error).__name__


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``spftune CMD: error: ...``) instead of usage + message."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from spftune import __version__

    parser = Parser(
        prog="spftune",
        description="Safety-preserving fine-tuning (SPF) of chat LLMs: align, fine-tune, evaluate, report.",
        epilog="Every command takes --config FILE.yaml whose keys are its flags without '--'; flags override it.",
    )
    parser.add_argument("--version", action="version", version=f"spftune {__version__}")
    sub = parser.add_subparsers(dest="_command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in load_commands().values():
        p = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spftune`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code (2 for user errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # --help, --version, usage errors: argparse already printed
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    try:
        code = args._run(args)
    except USER_ERRORS as e:
        print(f"spftune {args._command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"spftune {args._command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
