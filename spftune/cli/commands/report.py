"""``spftune report``: markdown report and PNG plot from one or more run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from spftune.cli.registry import register_command


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="Run directories holding metrics.json.")
    parser.add_argument("--out", default=None, help="Where report.md and report.png go (default: the only RUN_DIR, "
                        "or runs/report-<timestamp> for several).")
    parser.add_argument("--title", default="spftune report", help="Report title.")


@register_command("report", help="Build report.md and report.png from run directories.", arguments=arguments)
def run(args: argparse.Namespace) -> int:
    from spftune.cli.commands._common import default_out
    from spftune.report import console_table, load_runs, write_report

    models = load_runs(args.runs)
    out = Path(args.out) if args.out else (Path(args.runs[0]) if len(args.runs) == 1 else default_out("report"))
    paths = write_report(models, out, title=args.title, intro=[f"Runs: {', '.join(f'`{r}`' for r in args.runs)}."])
    print(console_table({k: {kk: vv for kk, vv in m.items() if not kk.startswith("_")} for k, m in models.items()}))
    print(f"wrote {paths['markdown']} and {paths['plot']}")
    return 0
