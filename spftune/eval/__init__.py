"""The evaluation harness: tasks (prompt sets) -> batched generation -> judges -> metrics -> reports.

Quick use::

    from spftune.eval import evaluate
    result = evaluate(model, tokenizer, safety=["advbench"], overrefusal=["stl-physical-safe"], utility=["sst2"],
                      judges=["keyword"], data_dir="../shared/data", limit=100, out_dir="runs/eval")

Tasks and judges are registries: ``list_tasks()``, ``list_judges()``, ``register_task``, ``register_judge``.
"""

from spftune.eval import prompt_sets as _prompt_sets  # noqa: F401  (registers the prompt sets)
from spftune.eval import user_files as _user_files  # noqa: F401  (registers file: and jsonl:)
from spftune.eval import utility_tasks as _utility_tasks  # noqa: F401  (registers the utility tasks)
from spftune.eval.datasets import ChecksumError, DataSource, LoadContext, fetch, resolve_data_dir
from spftune.eval.generation import GenerationSettings, generate, generate_from_ids, generate_with_settings
from spftune.eval.judges import (
    KEYWORD_JUDGE_VERSION,
    LLM_JUDGE_RUBRIC_VERSION,
    REFUSAL_PHRASES,
    GuardJudge,
    Judge,
    JudgeEndpointError,
    KeywordJudge,
    LLMJudge,
    Verdict,
    get_judge,
    is_refusal,
    list_judges,
    parse_guard_output,
    parse_score,
    register_judge,
)
from spftune.eval.metrics import accuracy, harmful_rate, over_refusal_rate, rate_with_ci, rates_by_category
from spftune.eval.registry import UnknownNameError
from spftune.eval.report import comparison_table, markdown_table
from spftune.eval.runner import evaluate, write_outputs
from spftune.eval.tasks import (
    Example,
    Task,
    get_task,
    list_tasks,
    register_task,
    register_task_prefix,
    task_prefixes,
)

__all__ = [
    "KEYWORD_JUDGE_VERSION",
    "LLM_JUDGE_RUBRIC_VERSION",
    "REFUSAL_PHRASES",
    "ChecksumError",
    "DataSource",
    "Example",
    "GenerationSettings",
    "GuardJudge",
    "Judge",
    "JudgeEndpointError",
    "KeywordJudge",
    "LLMJudge",
    "LoadContext",
    "Task",
    "UnknownNameError",
    "Verdict",
    "accuracy",
    "comparison_table",
    "evaluate",
    "fetch",
    "generate",
    "generate_from_ids",
    "generate_with_settings",
    "get_judge",
    "get_task",
    "harmful_rate",
    "is_refusal",
    "list_judges",
    "list_tasks",
    "markdown_table",
    "over_refusal_rate",
    "parse_guard_output",
    "parse_score",
    "rate_with_ci",
    "rates_by_category",
    "register_judge",
    "register_task",
    "register_task_prefix",
    "resolve_data_dir",
    "task_prefixes",
    "write_outputs",
]
