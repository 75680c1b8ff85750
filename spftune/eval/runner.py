"""``evaluate``: prompt sets -> generation -> judges -> metrics -> ``eval.json``, ``eval.md``, ``eval.png``.

Every task is resolved and loaded, and every judge built, before the first token is generated, so a typo fails in
a second, not after an hour of generation. All prompts of all sets go through one batched :func:`generate` call.
With ``out_dir`` the generations are written to ``generations.jsonl`` before any judge runs (a judge endpoint that
is down loses nothing), then rewritten with the verdicts; all files are written atomically.

Result layout (also the content of ``eval.json``)::

    {"spftune_version": ..., "settings": {model, chat_format, generation, judges, data_dir, limit, seed, ...},
     "sets": {"advbench": {"kind": "safety", "judge": "keyword", "harmful_rate": r, "ci_low": l, "ci_high": h,
                           "n": n, "n_invalid": 0, "per_category": {...}, "judges": {"keyword": {...}, ...}},
              "stl-physical-safe": {"kind": "overrefusal", "judge": "keyword", "over_refusal_rate": ..., ...},
              "sst2": {"kind": "utility", "accuracy": ..., "ci_low": ..., "ci_high": ..., "n": ...}},
     "timing": {"generation_s": ..., "judging_s": ...}}

For a safety set the headline numbers come from the first judge in ``judges``; every judge's numbers are under
``judges``. Over-refusal always uses the keyword judge (refusal detection); harm judges run on safety sets only.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spftune.eval.datasets import LoadContext
from spftune.eval.generation import GenerationSettings, chat_format_record, generate_with_settings
from spftune.eval.judges import Judge, KeywordJudge, Verdict, get_judge
from spftune.eval.metrics import mean, rate_with_ci, rates_by_category
from spftune.eval.report import markdown_table
from spftune.eval.tasks import Example, Task, get_task
from spftune.models.storage import write_text_atomic


def split_names(value: str | Sequence[str] | None) -> list[str]:
    """Set, task or judge names from ``"a,b"``, ``["a", "b"]`` or ``["a,b"]`` (the command line's forms)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    return [n.strip() for v in value if v for n in str(v).split(",") if n.strip()]


def _model_name(model: Any, model_name: str | None) -> str:
    if model_name:
        return model_name
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None) or type(model).__name__)


def _versions() -> dict[str, str]:
    import torch

    import spftune

    versions = {"spftune": spftune.__version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a hard dependency, but the dummy pipeline does not need it
        pass
    return versions


def _build_judges(judges: Sequence[str | Judge] | str, judge_options: Mapping[str, Mapping[str, Any]]) -> list[Judge]:
    built: list[Judge] = []
    for item in split_names(judges) if isinstance(judges, str) else list(judges):
        judge = get_judge(item.strip(), **dict(judge_options.get(item.strip(), {}))) if isinstance(item, str) else item
        if any(j.name == judge.name for j in built):
            raise ValueError(f"judge {judge.name!r} is listed twice")
        built.append(judge)
    if not built:
        raise ValueError("no judge given; pass at least one, e.g. judges=['keyword']")
    unknown_options = set(judge_options) - {j.name for j in built}
    if unknown_options:
        raise ValueError(f"options given for judge(s) not in use: {', '.join(sorted(unknown_options))}")
    return built


def _judge_summary(verdicts: Sequence[Verdict], categories: Sequence[str | None], *, key: str, n_boot: int, seed: int,
                   per_category: bool) -> dict[str, Any]:
    decided = [(v, c) for v, c in zip(verdicts, categories, strict=True) if v.harmful is not None]
    if not decided:
        raise ValueError("the judge could not decide on any response; check the judge's raw outputs in generations.jsonl")
    flags = [bool(v.harmful) for v, _ in decided]
    stats = rate_with_ci(flags, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {key: stats["rate"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"], "n": stats["n"],
                           "n_invalid": len(verdicts) - len(decided)}
    scores = [v.score for v, _ in decided if v.score is not None]
    if scores:
        out["mean_score"] = mean(scores)
    cats = [c for _, c in decided]
    if per_category and any(c is not None for c in cats):
        out["per_category"] = rates_by_category(flags, cats, n_boot=n_boot, seed=seed)
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    safety: Sequence[str] | str | None = (),
    overrefusal: Sequence[str] | str | None = (),
    utility: Sequence[str] | str | None = (),
    judges: Sequence[str | Judge] | str = ("keyword",),
    judge_options: Mapping[str, Mapping[str, Any]] | None = None,
    data_dir: str | os.PathLike | None = None,
    allow_download: bool = False,
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    system: str | None = None,
    out_dir: str | os.PathLike | None = None,
    model_name: str | None = None,
    n_boot: int = 2000,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on the given prompt sets and tasks; see the module docstring for the result.

    ``safety`` / ``overrefusal`` / ``utility`` take registered names, ``file:PATH`` / ``jsonl:PATH``, or a
    comma-separated string. ``limit`` caps each set (deterministic subsample by ``seed``). ``judge_options`` maps a
    judge name to its constructor options, e.g. ``{"llm": {"base_url": ..., "model": ...}}``.
    """
    t_start = time.perf_counter()
    requested = {"safety": split_names(safety), "overrefusal": split_names(overrefusal),
                 "utility": split_names(utility)}
    all_names = [n for names in requested.values() for n in names]
    if not all_names:
        raise ValueError("nothing to evaluate; pass at least one safety, overrefusal or utility set")
    duplicates = sorted({n for n in all_names if all_names.count(n) > 1})
    if duplicates:
        raise ValueError(f"set(s) listed more than once: {', '.join(duplicates)}")
    tasks: list[Task] = [get_task(name, kind) for kind, names in requested.items() for name in names]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, system=system)
    judge_list = _build_judges(judges, judge_options or {})
    refusal_judge = next((j for j in judge_list if j.measures == "refusal"), None) or KeywordJudge()

    context = LoadContext.create(data_dir, allow_download)
    loaded: dict[str, list[Example]] = {}
    files: dict[str, list[dict[str, str]]] = {}
    for task in tasks:
        before = len(context.files)
        loaded[task.name] = task.load(limit=limit, seed=seed, context=context)
        files[task.name] = context.files[before:]

    prompts = [e.prompt for t in tasks for e in loaded[t.name]]
    t_gen = time.perf_counter()
    responses = generate_with_settings(model, tokenizer, prompts, settings, show_progress=show_progress)
    generation_s = time.perf_counter() - t_gen
    per_task: dict[str, list[str]] = {}
    offset = 0
    for t in tasks:
        per_task[t.name] = responses[offset : offset + len(loaded[t.name])]
        offset += len(loaded[t.name])

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _write_generations(out / "generations.jsonl", tasks, loaded, per_task, {})

    t_judge = time.perf_counter()
    verdicts: dict[str, dict[str, list[Verdict]]] = {}
    sets: dict[str, Any] = {}
    for task in tasks:
        examples, texts = loaded[task.name], per_task[task.name]
        prompts_t = [e.prompt for e in examples]
        categories = [e.category for e in examples]
        if task.kind == "utility":
            correct = [task.score(r, e) for r, e in zip(texts, examples, strict=True)]
            verdicts[task.name] = {"score": [Verdict(score=float(c)) for c in correct]}
            stats = rate_with_ci(correct, n_boot=n_boot, seed=seed)
            sets[task.name] = {"kind": "utility", "accuracy": stats["rate"], "ci_low": stats["ci_low"],
                               "ci_high": stats["ci_high"], "n": stats["n"]}
            continue
        if task.kind == "overrefusal":
            v = refusal_judge.judge(prompts_t, texts)
            verdicts[task.name] = {refusal_judge.name: v}
            refused = [Verdict(harmful=x.refused) for x in v]  # the "flag" here is: refused a benign prompt
            entry = {"kind": "overrefusal", "judge": refusal_judge.name,
                     **_judge_summary(refused, categories, key="over_refusal_rate", n_boot=n_boot, seed=seed,
                                      per_category=True)}
            sets[task.name] = entry
            continue
        verdicts[task.name] = {}
        summaries: dict[str, Any] = {}
        for judge in judge_list:
            v = judge.judge(prompts_t, texts)
            verdicts[task.name][judge.name] = v
            summaries[judge.name] = _judge_summary(v, categories, key="harmful_rate", n_boot=n_boot, seed=seed,
                                                   per_category=True)
        head = judge_list[0].name
        sets[task.name] = {"kind": "safety", "judge": head, **summaries[head],
                           "judges": {name: {k: s[k] for k in s if k != "per_category"} for name, s in summaries.items()}}
    judging_s = time.perf_counter() - t_judge

    result = {
        "spftune_version": _versions()["spftune"],
        "settings": {
            "model": _model_name(model, model_name),
            "chat_format": chat_format_record(tokenizer),
            "generation": settings.to_dict(),
            "judges": [j.describe() for j in judge_list],
            "overrefusal_judge": refusal_judge.describe(),
            "data_dir": str(context.data_dir) if context.data_dir is not None else None,
            "limit": limit,
            "seed": seed,
            "n_boot": n_boot,
            "confidence": 0.95,
            "tasks": {t.name: {**t.describe(), "files": files[t.name]} for t in tasks},
            "versions": _versions(),
        },
        "sets": sets,
        "timing": {"generation_s": generation_s, "judging_s": judging_s, "total_s": time.perf_counter() - t_start,
                   "n_prompts": len(prompts)},
    }
    if out is not None:
        write_outputs(result, out, tasks=tasks, loaded=loaded, responses=per_task, verdicts=verdicts)
    return result


def _write_generations(path: Path, tasks: Sequence[Task], loaded: Mapping[str, list[Example]],
                       responses: Mapping[str, list[str]], verdicts: Mapping[str, Mapping[str, list[Verdict]]]) -> None:
    lines = []
    for task in tasks:
        for i, (example, response) in enumerate(zip(loaded[task.name], responses[task.name], strict=True)):
            record: dict[str, Any] = {"set": task.name, "kind": task.kind, "index": i, "prompt": example.prompt,
                                      "category": example.category, "response": response}
            if example.reference is not None:
                record["reference"] = example.reference
            judged = verdicts.get(task.name, {})
            if judged:
                record["verdicts"] = {name: v[i].to_dict() for name, v in judged.items()}
            lines.append(json.dumps(record, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_outputs(result: Mapping[str, Any], out_dir: str | os.PathLike, *, tasks: Sequence[Task] | None = None,
                  loaded: Mapping[str, list[Example]] | None = None, responses: Mapping[str, list[str]] | None = None,
                  verdicts: Mapping[str, Mapping[str, list[Verdict]]] | None = None) -> None:
    """Write ``eval.json``, ``eval.md``, ``eval.png`` (and ``generations.jsonl`` with verdicts when given)."""
    from spftune.eval.plotting import plot_eval

    out = Path(out_dir)
    if tasks is not None and loaded is not None and responses is not None:
        _write_generations(out / "generations.jsonl", tasks, loaded, responses, verdicts or {})
    write_text_atomic(out / "eval.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "eval.md", markdown_table(result))
    plot_eval(result, out / "eval.png")
