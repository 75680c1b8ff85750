"""Judges: refusal keywords, a Llama-Guard-style classifier, and an LLM judge, each registered by name."""

from spftune.eval.judges.base import JUDGES, Judge, Verdict, get_judge, list_judges, register_judge
from spftune.eval.judges.guard import GuardJudge, parse_guard_output
from spftune.eval.judges.keyword import KEYWORD_JUDGE_VERSION, REFUSAL_PHRASES, KeywordJudge, is_refusal
from spftune.eval.judges.llm import LLM_JUDGE_RUBRIC_VERSION, JudgeEndpointError, LLMJudge, parse_score

__all__ = [
    "JUDGES",
    "KEYWORD_JUDGE_VERSION",
    "LLM_JUDGE_RUBRIC_VERSION",
    "REFUSAL_PHRASES",
    "GuardJudge",
    "Judge",
    "JudgeEndpointError",
    "KeywordJudge",
    "LLMJudge",
    "Verdict",
    "get_judge",
    "is_refusal",
    "list_judges",
    "parse_guard_output",
    "parse_score",
    "register_judge",
]
