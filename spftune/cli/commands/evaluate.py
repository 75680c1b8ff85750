"""``spftune eval``: harmful rate, over-refusal rate and task accuracy of a model, through the evaluation harness."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spftune.cli.commands._common import (
    default_out,
    load_model,
    model_source,
    section_arguments,
    write_json,
)
from spftune.cli.options import Section, build, resolve
from spftune.cli.registry import register_command


@dataclass
class EvalConfig:
    """Options of ``spftune eval`` (keys = flags = YAML keys)."""

    model: str | None = field(default=None, metadata={"help": "Hugging Face id, model directory or spftune run directory (default: the embedded model)."})
    safety: list[str] = field(default_factory=lambda: ["spftune-harmful"], metadata={"help": "Harmful prompt sets (registered names or file:PATH); the harmful rate is measured on each."})
    overrefusal: list[str] = field(default_factory=lambda: ["spftune-overrefusal", "spftune-benign"], metadata={"help": "Benign prompt sets on which refusing is over-refusal."})
    utility: list[str] = field(default_factory=list, metadata={"help": "Utility tasks scored for accuracy (e.g. spftune-synthetic, sst2, gsm8k)."})
    judge: list[str] = field(default_factory=lambda: ["keyword"], metadata={"help": "Judges of the safety sets; the first gives the headline number."})
    data_dir: str | None = field(default=None, metadata={"help": "Directory of public reference data (e.g. ../shared/data) for sets like advbench."})
    limit: int | None = field(default=None, metadata={"help": "Cap on prompts per set (seeded subsample)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated per prompt."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})
    system: str | None = field(default=None, metadata={"help": "System prompt for every prompt."})
    seed: int = field(default=0, metadata={"help": "Seed of subsampling and bootstrap."})
    out: str | None = field(default=None, metadata={"help": "Output directory (default: runs/eval-<timestamp>)."})


SECTIONS = (Section(EvalConfig, title="evaluation"),)


_section_arguments = section_arguments(*SECTIONS)


def arguments(parser: argparse.ArgumentParser) -> None:
    _section_arguments(parser)
    parser.add_argument("--list", dest="_list", action="store_true",
                        help="List the registered prompt sets, utility tasks and judges, then exit.")


def listing() -> str:
    """What ``spftune eval --list`` prints: every registered set, task and judge with its one-line description."""
    from spftune.eval.judges import JUDGES
    from spftune.eval.tasks import list_tasks, task_prefixes

    lines = []
    titles = {"safety": "safety prompt sets (--safety)", "overrefusal": "over-refusal prompt sets (--overrefusal)",
              "utility": "utility tasks (--utility)"}
    for kind, title in titles.items():
        lines.append(f"{title}:")
        for task in list_tasks(kind):
            lines.append(f"  {task.name:<28} {task.description}")
    prefixes = {"file": "a user prompt file (JSONL/CSV with a prompt column) for --safety or --overrefusal",
                "jsonl": "a user utility file (JSONL with prompt and reference answer) for --utility"}
    lines.append("user files:")
    for prefix in task_prefixes():
        lines.append(f"  {prefix + ':PATH':<28} {prefixes.get(prefix, 'registered by a plugin')}")
    lines.append("judges (--judge):")
    for name in JUDGES.names():
        doc = (JUDGES.get(name).__doc__ or "").strip().split("\n")[0]
        lines.append(f"  {name:<28} {doc}")
    return "\n".join(lines)


@register_command(
    "eval", help="Evaluate a model: harmful rate, over-refusal, task accuracy.", arguments=arguments,
    description="Generates answers to each prompt set and judges them. Writes config.yaml, metrics.json (headline "
    "numbers), eval.json (every set), eval.md, eval.png and generations.jsonl into --out.",
)
def run(args: argparse.Namespace) -> int:
    from spftune.eval import evaluate
    from spftune.eval.runner import split_names
    from spftune.eval.tasks import get_task
    from spftune.report import console_table, summarize_eval
    from spftune.train.loop import write_yaml

    if getattr(args, "_list", False):
        print(listing())
        return 0
    cfg = build(SECTIONS[0], resolve(args, SECTIONS))
    # "--safety advbench,file:x.jsonl" and "--safety advbench file:x.jsonl" mean the same
    cfg.safety, cfg.overrefusal, cfg.utility, cfg.judge = (
        split_names(cfg.safety), split_names(cfg.overrefusal), split_names(cfg.utility), split_names(cfg.judge))
    for kind, names in (("safety", cfg.safety), ("overrefusal", cfg.overrefusal), ("utility", cfg.utility)):
        for name in names:
            get_task(name, kind)  # a typo fails now, before the model loads
    out = Path(cfg.out) if cfg.out else default_out("eval")
    model, tokenizer, source = load_model("eval", cfg.model)
    write_yaml(out / "config.yaml", {**asdict(cfg), "model": model_source(cfg.model), "out": str(out)})
    result = evaluate(model, tokenizer, safety=cfg.safety, overrefusal=cfg.overrefusal, utility=cfg.utility,
                      judges=cfg.judge, data_dir=cfg.data_dir, limit=cfg.limit, seed=cfg.seed,
                      max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, system=cfg.system, out_dir=out,
                      model_name=source, show_progress=args._progress)
    metrics = {**summarize_eval(result), "sets": result["sets"]}
    write_json(out / "metrics.json", metrics)
    print(console_table({Path(source).name or source: metrics}))
    print(f"wrote {out}")
    return 0
