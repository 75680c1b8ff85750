"""``spftune align``: the house protocol's alignment step (refusals + the model's own benign answers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spftune.cli.commands._common import add_config_flag, add_progress_flag, write_json
from spftune.cli.options import Section, add_section, build, resolve
from spftune.cli.registry import register_command
from spftune.train.align import AlignConfig

SECTIONS = (Section(AlignConfig, title="alignment recipe"),)


def arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser)
    add_progress_flag(parser)
    parser.add_argument("--eval", dest="_eval", action=argparse.BooleanOptionalAction, default=True,
                        help="Measure the aligned model on the held-out test prompts (default: on).")
    for section in SECTIONS:
        add_section(parser, section)


@register_command(
    "align", help="Align a chat model: refuse harmful requests, keep answering benign ones.", arguments=arguments,
    description="Supervised alignment on harmful train prompts -> refusals plus benign and safe-but-scary train "
    "prompts -> the model's own earlier answers. Cached under $SPFTUNE_HOME/aligned/<recipe hash> unless --out.",
)
def run(args: argparse.Namespace) -> int:
    from spftune.models import load_model_and_tokenizer
    from spftune.train.align import align
    from spftune.train.pipeline import house_evaluate

    cfg = build(SECTIONS[0], resolve(args, SECTIONS))
    record = align(cfg, progress=args._progress)
    run_dir = Path(record["run_dir"])
    metrics = {"aligned": record["checkpoint"], "cached": record["cached"], **record["data"],
               "seconds_per_step": record["train"]["seconds_per_step"], "steps": record["train"]["steps"],
               "train_seconds": record["train"]["train_seconds"]}
    if args._eval:
        model, tokenizer = load_model_and_tokenizer(record["checkpoint"])
        metrics.update(house_evaluate(model, tokenizer, out_dir=run_dir / "eval", model_name="aligned",
                                      progress=args._progress))
    write_json(run_dir / "metrics.json", metrics)
    summary = f"aligned checkpoint: {record['checkpoint']}" + (" (cached)" if record["cached"] else "")
    if args._eval:
        summary += (f"; refuses {100 * (1 - metrics['harmful_rate']):.0f}% of harmful test prompts, "
                    f"{100 * metrics['over_refusal_rate']:.0f}% of safe-but-scary ones, "
                    f"{100 * metrics.get('benign_refusal_rate', 0):.0f}% of benign ones")
    print(summary)
    return 0
