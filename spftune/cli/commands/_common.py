"""Helpers shared by the subcommands: ``--config``, model loading with run-directory resolution, outputs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file whose keys are this command's flags without '--' (flags override it).")


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", dest="_progress", action=argparse.BooleanOptionalAction, default=True,
                        help="Show progress bars (default: on).")


def section_arguments(*sections: Any):
    """The ``arguments(parser)`` of a command made of ``--config``, ``--progress`` and its option sections."""
    from spftune.cli.options import add_section

    def arguments(parser: argparse.ArgumentParser) -> None:
        add_config_flag(parser)
        add_progress_flag(parser)
        for section in sections:
            add_section(parser, section)

    return arguments


def model_source(name: str | None) -> str | None:
    """``--model`` as given, or the ``checkpoint`` folder inside a spftune run directory."""
    if name is None:
        return None
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "checkpoint" / "config.json").is_file():
        return str(path / "checkpoint")
    return name


def note(command: str, message: str) -> None:
    print(f"spftune {command}: note: {message}", file=sys.stderr)


def load_model(command: str, name: str | None) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved source); prints a one-line note when the tokenizer has no chat template."""
    from spftune.core.chat import PLAIN_TEMPLATE_PROMPT, has_chat_template
    from spftune.models import load_model_and_tokenizer, resolve_model

    source = resolve_model(model_source(name))
    model, tokenizer = load_model_and_tokenizer(source)
    if not has_chat_template(tokenizer):
        template = PLAIN_TEMPLATE_PROMPT.replace("\n", "\\n")
        note(command, f"the tokenizer of {source} has no chat template; using the plain template "
                      f"'{template}<response><eos>' (spftune.core.chat.PLAIN_TEMPLATE_PROMPT)")
    return model, tokenizer, source


def default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_json(path: Path, value: Any) -> None:
    from spftune.models import write_text_atomic

    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
