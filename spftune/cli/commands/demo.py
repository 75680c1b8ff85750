"""``spftune demo``: align (cached) -> fine-tune with SFT and with SPF -> evaluate the three -> report."""

from __future__ import annotations

import argparse

from spftune.cli.commands._common import section_arguments
from spftune.cli.options import Section, build, read_safety_examples, resolve
from spftune.cli.registry import register_command
from spftune.core.config import SPFConfig
from spftune.train.pipeline import DemoConfig

SECTIONS = (
    Section(DemoConfig, title="demo"),
    Section(SPFConfig, prefix="spf_", title="SPF filter", converters={"safety_examples": read_safety_examples}),
)


arguments = section_arguments(*SECTIONS)


@register_command(
    "demo", help="The whole story offline: align, fine-tune with SFT and SPF, evaluate, report.", arguments=arguments,
    description="Offline on the embedded SmolLM2-135M-Instruct: aligns it (cached after the first run), fine-tunes "
    "the aligned model on the synthetic task mixed with attack examples once per method, evaluates all, prints a "
    "table and writes metrics.json, report.md and report.png into --out. About 15 minutes on 2 CPU cores the first "
    "time; --quick runs a small version in about 3 minutes.",
)
def run(args: argparse.Namespace) -> int:
    from spftune.train.pipeline import run_demo

    values = resolve(args, SECTIONS)
    cfg, spf = (build(s, values) for s in SECTIONS)
    result = run_demo(cfg, spf_config=spf, progress=args._progress)
    print(result["table"])
    print(f"wrote {result['out']}/metrics.json, report.md, report.png ({result['timings']['total_s']:.0f} s)")
    return 0
