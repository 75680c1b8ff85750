"""Command-line options built from the config dataclasses (TRL ``trl sft`` style), plus YAML config files.

Each field of a config dataclass becomes a flag: ``batch_size`` -> ``--batch-size``, with the field's ``help``
metadata and its default in the help text. A section can carry a prefix: the SPF options are ``--spf-rank``,
``--spf-gate``, ... and ``spf_rank`` in YAML. Precedence: dataclass defaults < ``--config FILE.yaml`` < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Section:
    """One config dataclass exposed on the command line, its flags optionally prefixed (``spf_`` -> ``--spf-*``)."""

    cls: type
    prefix: str = ""
    skip: tuple[str, ...] = ()
    title: str | None = None
    # field name -> function turning the flag's string into the field value (e.g. a file path into examples)
    converters: dict[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)

    def keys(self) -> list[str]:
        return [self.prefix + f.name for f in dataclasses.fields(self.cls) if f.name not in self.skip]


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return ""
    if value is None or value == []:
        return ""
    if isinstance(value, list):
        value = " ".join(map(str, value))
    if isinstance(value, str) and len(value) > 40:
        value = value[:37] + "..."
    return f" (default: {value})"


def add_section(parser: argparse.ArgumentParser, section: Section) -> None:
    """Add one flag per field of ``section.cls``; every default is SUPPRESS so only given flags reach the args."""
    hints = typing.get_type_hints(section.cls)
    group = parser.add_argument_group(section.title) if section.title else parser
    for field in dataclasses.fields(section.cls):
        if field.name in section.skip:
            continue
        key = section.prefix + field.name
        tp = _unwrap_optional(hints.get(field.name, str))
        help_text = (field.metadata.get("help", "") + _default_text(field)).replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": help_text}
        if field.name in section.converters:
            kwargs.update(type=str, metavar="PATH")
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list or tp is typing.Any:
            kwargs.update(nargs="+", type=str, metavar="NAME")
        elif tp in (int, float, str):
            kwargs.update(type=tp, metavar={int: "N", float: "X", str: "STR"}[tp])
        else:
            kwargs.update(type=str, metavar="STR")
        group.add_argument(_flag(key), **kwargs)


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; ``FileNotFoundError`` / ``ValueError`` with the file name otherwise."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found; pass an existing YAML file to --config")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise ValueError(f"config file {path}{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value, got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def resolve(args: argparse.Namespace, sections: Sequence[Section], extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Merge ``--config`` (if given) and the flags actually passed; unknown YAML keys raise ``ValueError``."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "config"}
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        from_file = read_yaml_config(config_path)
        known = {k for s in sections for k in s.keys()} | set(extra_keys)
        unknown = sorted(set(from_file) - known)
        if unknown:
            raise ValueError(
                f"config file {config_path}: unknown key(s) {', '.join(unknown)}; valid keys are the command's flags "
                f"without '--' (see --help)"
            )
        values.update(from_file)
    values.update(given)
    return values


def build(section: Section, values: dict[str, Any]) -> Any:
    """Instantiate ``section.cls`` from the merged values (prefix stripped, converters applied)."""
    kwargs = {}
    for field in dataclasses.fields(section.cls):
        key = section.prefix + field.name
        if field.name in section.skip or key not in values:
            continue
        value = values[key]
        if field.name in section.converters and isinstance(value, (str, Path)):
            value = section.converters[field.name](value)
        kwargs[field.name] = value
    try:
        return section.cls(**kwargs)
    except TypeError as e:  # a YAML value of the wrong kind, e.g. a list where a number is expected
        raise ValueError(f"invalid option value for {section.cls.__name__}: {e}") from None


def read_safety_examples(path: str | Path) -> list[dict[str, str]]:
    """SPF safety examples from a JSONL/JSON/CSV file of ``{prompt, refusal}`` (or ``{prompt, response}``) rows."""
    from spftune.train.dataset import read_examples

    return [{"prompt": e["prompt"], "refusal": e["response"]} for e in read_examples(path)]
