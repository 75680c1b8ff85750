"""Method options: the ``--method-options KEY=VALUE`` strings (or Python values) checked and converted once.

Every baseline declares its options as ``{name: Option(default, parse, help)}``; :func:`parse_options` rejects an
unknown key (listing the valid ones) and a bad value with a one-line ``ValueError`` that names the method, the option
and what it expects. ``parse`` accepts both the CLI string and an already typed value, so parsing is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    default: Any
    parse: Callable[[Any], Any]  # value -> typed value; raises ValueError("must be ...") on a bad value
    help: str


def parse_options(
    method: str, options: Mapping[str, Any], spec: Mapping[str, Option], *, hint: str | None = None
) -> dict[str, Any]:
    """``spec`` defaults overridden by ``options``, each value converted; ``ValueError`` naming the bad option.

    ``hint`` is appended to the message for an unknown option (e.g. where the method's settings live instead).
    """
    unknown = sorted(set(options) - set(spec))
    if unknown:
        valid = ", ".join(sorted(spec)) if spec else "none"
        raise ValueError(f"method {method!r} has no option {unknown[0]!r}; valid options: {valid}"
                         + (f"; {hint}" if hint else ""))
    out = {}
    for key, option in spec.items():
        if key not in options:
            out[key] = option.default
            continue
        value = options[key]
        try:
            out[key] = option.parse(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"method {method!r}: option {key}={value!r} {exc}; {option.help}") from None
    return out


SPF_FLAGS_HINT = "the SPF filter is configured with the --spf-* flags (e.g. --spf-rank 10)"


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a{'n integer' if kind is int else ' number'}, not a boolean")
    if isinstance(value, str):
        value = value.strip()
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a{'n integer' if kind is int else ' number'}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise ValueError("must be an integer")
    if kind is float and number != number:
        raise ValueError("must be a number, not NaN")
    return number


def open_interval(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = _number(value, float)
        if not low < number < high:
            raise ValueError(f"must be strictly between {low:g} and {high:g}")
        return number

    return parse


def closed_interval(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = _number(value, float)
        if not low <= number <= high:
            raise ValueError(f"must be in [{low:g}, {high:g}]")
        return number

    return parse


def integer(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = _number(value, int)
        if number < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return number

    return parse


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse
