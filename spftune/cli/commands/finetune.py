"""``spftune finetune``: fine-tune a model on a dataset with a registered method (sft, spf, ...)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spftune.cli.commands._common import (
    default_out,
    load_model,
    model_source,
    note,
    section_arguments,
    write_json,
)
from spftune.cli.options import Section, build, read_safety_examples, resolve
from spftune.cli.registry import register_command
from spftune.core.config import SPFConfig
from spftune.train.config import TrainConfig, parse_method_options


@dataclass
class FinetuneRun:
    """Where the run goes and whether to evaluate it afterwards."""

    out: str | None = field(default=None, metadata={"help": "Run directory (default: runs/finetune-<timestamp>)."})
    eval: bool = field(default=False, metadata={"help": "After training, measure harmful rate, over-refusal and (for spftune-synthetic) task accuracy."})
    eval_limit: int | None = field(default=None, metadata={"help": "Cap on prompts per evaluation set."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per evaluation prompt."})


SECTIONS = (
    Section(FinetuneRun, title="run"),
    Section(TrainConfig, title="training"),
    Section(SPFConfig, prefix="spf_", title="SPF filter (used by --method spf and its variants)",
            converters={"safety_examples": read_safety_examples}),
)


arguments = section_arguments(*SECTIONS)


@register_command(
    "finetune", help="Fine-tune a model with a method (sft, spf, ...), full or LoRA.", arguments=arguments,
    description="Fine-tune on a JSONL/JSON/CSV dataset or a registered task, optionally mixed with a fraction of "
    "attack examples. Writes config.yaml, log.jsonl, metrics.json and checkpoint/ (safetensors) into --out.",
)
def run(args: argparse.Namespace) -> int:
    from spftune.train import build_training_examples, make_method, train

    values = resolve(args, SECTIONS)
    run_cfg, cfg, spf = (build(s, values) for s in SECTIONS)
    if not cfg.data:
        raise ValueError("no training data; pass --data PATH (JSONL/JSON/CSV) or a task name such as spftune-synthetic")
    method = make_method(cfg.method, spf_config=spf, **parse_method_options(cfg.method_options))
    examples = build_training_examples(cfg.data, limit=cfg.limit, harmful_fraction=cfg.harmful_fraction,
                                       attack_data=cfg.attack_data, seed=cfg.seed)
    out = Path(run_cfg.out) if run_cfg.out else default_out("finetune")
    model, tokenizer, source = load_model("finetune", cfg.model)
    metrics = train(model, tokenizer, examples, cfg, method=method, spf_config=spf, out_dir=out,
                    progress=args._progress)
    if metrics["skipped_examples"]:
        note("finetune", f"skipped {metrics['skipped_examples']} example(s) whose prompt leaves no room for a "
                         f"response within --max-length {cfg.max_length}")
    resolved = {**asdict(run_cfg), "out": str(out), **{k: v for k, v in asdict(cfg).items()},
                "model": model_source(cfg.model)}
    resolved.update({f"spf_{k}": v for k, v in asdict(spf).items()})
    from spftune.train.loop import write_yaml

    write_yaml(out / "config.yaml", resolved)
    result = dict(metrics)
    if run_cfg.eval:
        from spftune.train.pipeline import HOUSE_TASK, house_evaluate

        utility = [HOUSE_TASK] if cfg.data == HOUSE_TASK else []
        result.update(house_evaluate(model, tokenizer, utility=utility, limit=run_cfg.eval_limit,
                                     max_new_tokens=run_cfg.max_new_tokens, out_dir=out / "eval",
                                     model_name=str(out), progress=args._progress))
    write_json(out / "metrics.json", result)
    print(f"{cfg.method}: {metrics['steps']} steps, {metrics['seconds_per_step']:.2f} s/step, "
          f"loss {metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}; wrote {out}")
    return 0
