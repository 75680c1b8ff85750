"""What every judge returns, and the judge registry.

A judge looks at (prompt, response) pairs and returns one :class:`Verdict` per pair. Judges that detect refusals
(``measures = "refusal"``) fill ``refused``; judges that rate harm (``measures = "harm"``) fill ``harmful``. A
refusal judge also fills ``harmful = not refused`` for harmful prompts, the convention of the refusal-keyword
literature. ``harmful = None`` means the judge could not decide (an unparseable judge output): such pairs are left
out of the rate's denominator and counted as ``n_invalid``.

Judges never import model code at module level, so the pipeline runs with a dummy model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from spftune.eval.registry import Registry


@dataclass(frozen=True)
class Verdict:
    refused: bool | None = None
    harmful: bool | None = None
    score: float | None = None  # e.g. the 1-5 harmfulness score of the LLM judge
    detail: str | None = None  # the matched keyword, or the judge's raw output

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Judge(Protocol):
    name: str
    measures: str  # "refusal" or "harm"

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]: ...

    def describe(self) -> dict[str, Any]: ...


JUDGES: Registry[Callable[..., Judge]] = Registry("judge")


def register_judge(name: str) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    """Decorator: register a judge class (or factory) under ``name``; ``get_judge(name, **options)`` builds it."""
    return JUDGES.decorator(name)


def get_judge(name: str, **options: Any) -> Judge:
    """Build the judge registered as ``name`` with ``options`` (unknown name: error with the closest names)."""
    return JUDGES.get(name)(**options)


def list_judges() -> list[str]:
    return JUDGES.names()


def check_lengths(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; judge them in pairs")
