"""``spftune analyze``: the command line of :func:`spftune.analysis.analyze` (flags built from ``AnalyzeConfig``)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "Measure the paper's three findings (low rank, conflict, one sample is enough) on a model, with plots."
DESCRIPTION = (
    "Gradients of a safety batch, of the single SPF safety example and of a stream of utility batches, captured in "
    "factored form: CER(k) per weight matrix, utility/safety cosines and SPF's gate rate, single-vs-batch subspace "
    "overlap and a harm-category transfer matrix. Writes analysis.json, analysis.md and PNG plots into --out."
)


@dataclass
class AnalyzeConfig:
    """Settings of one ``spftune analyze`` run (``--config FILE.yaml`` takes the same keys)."""

    model: str | None = field(default=None, metadata={"help": "Model directory, hub id or run directory (default: SmolLM2-135M-Instruct)."})
    utility: str = field(default="spftune-synthetic", metadata={"help": "Utility data: gsm8k, sst2, a training task (spftune-synthetic) or a .jsonl/.json/.csv file."})
    out: str | None = field(default=None, metadata={"help": "Output directory (default: runs/analyze-<timestamp>)."})
    rank: int = field(default=20, metadata={"help": "k of the bases; CER and overlap are reported for k = 1..rank."})
    n_batches: int = field(default=4, metadata={"help": "Utility batches in the conflict stream."})
    batch_size: int = field(default=8, metadata={"help": "Examples per utility batch."})
    n_safety_batch: int = field(default=8, metadata={"help": "Examples in the safety batch."})
    category_batch: int = field(default=4, metadata={"help": "Examples per category batch of the transfer matrix."})
    max_categories: int | None = field(default=None, metadata={"help": "Harm categories in the transfer matrix (0 = skip; default all)."})
    safety: str | None = field(default=None, metadata={"help": "Safety examples file {prompt, refusal[, category]} (default: the harmful train split)."})
    targets: Any = field(default="all", metadata={"help": "'all' or regexes over parameter names."})
    max_length: int = field(default=256, metadata={"help": "Token limit of one formatted example."})
    seed: int = field(default=0, metadata={"help": "Seed of the utility subset."})
    data_dir: str | None = field(default=None, metadata={"help": "Directory of public reference data (e.g. ../shared/data) for gsm8k, sst2."})
    plots: bool = field(default=True, metadata={"help": "Write the PNG plots."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice; 1 is often faster on a busy machine)."})


def _sections():
    from spftune.cli.options import Section

    return (Section(AnalyzeConfig, title="analyze"),)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``spftune analyze`` (one per ``AnalyzeConfig`` field, plus ``--config``)."""
    from spftune.cli.options import add_section

    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file whose keys are this command's flags without '--' (flags override it).")
    parser.add_argument("--progress", dest="_progress", action=argparse.BooleanOptionalAction, default=True,
                        help="Print each stage's time on stderr (default: on).")
    for section in _sections():
        add_section(parser, section)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``analyze`` on an ``add_subparsers()`` object (for a CLI without spftune's command registry)."""
    parser = subparsers.add_parser("analyze", help=HELP, description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(_run=run)
    return parser


def config_from_args(args: argparse.Namespace) -> AnalyzeConfig:
    from spftune.cli.options import build, resolve

    sections = _sections()
    cfg = build(sections[0], resolve(args, sections))
    if isinstance(cfg.targets, (list, tuple)) and list(cfg.targets) == ["all"]:
        cfg.targets = "all"
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run ``spftune analyze``; returns the exit code. User errors raise ``ValueError``/``OSError`` (one line)."""
    from spftune.analysis.runner import analyze
    from spftune.analysis.sources import read_safety_file, utility_kind

    cfg = config_from_args(args)
    _positive(cfg.rank, "--rank")
    utility_kind(cfg.utility)  # fail on a bad --utility before loading the model
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(_positive(cfg.threads, "--threads"))
    safety = read_safety_file(cfg.safety) if cfg.safety else None
    out = Path(cfg.out) if cfg.out else Path("runs") / f"analyze-{time.strftime('%Y%m%d-%H%M%S')}"
    model, tokenizer, source = _load_model(cfg.model)
    result = analyze(
        model, tokenizer, utility_examples=cfg.utility, safety_examples=safety, rank=cfg.rank,
        n_batches=cfg.n_batches, batch_size=cfg.batch_size, n_safety_batch=cfg.n_safety_batch,
        category_batch=cfg.category_batch, max_categories=cfg.max_categories, targets=cfg.targets,
        max_length=cfg.max_length, seed=cfg.seed, data_dir=cfg.data_dir, out_dir=out, plots=cfg.plots,
        progress=getattr(args, "_progress", False), model_name=cfg.model or source,
    )
    for f in result.findings:
        print(f"{f.key}: {'holds' if f.holds else 'does not hold'} - {f.summary}")
    print(f"wrote {out / 'analysis.json'}, {out / 'analysis.md'} and {len(result.files) - 2} plots "
          f"({result.timings['total']:.0f} s)")
    return 0


def _positive(value: Any, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    return value


def _load_model(name: str | None):
    try:
        from spftune.cli.commands._common import load_model
    except ImportError:  # a CLI without spftune's command helpers
        from spftune.models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(name)
        return model, tokenizer, name or "default"
    return load_model("analyze", name)
