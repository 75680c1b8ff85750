"""Compare alignment recipes on the validation splits (how the defaults of ``spftune align`` were chosen).

    .venv/bin/python bench/align_recipes.py '[{"benign_repeats": 2}, {"refusals": 150, "benign_repeats": 1}]'

Each JSON object overrides fields of :class:`spftune.train.align.AlignConfig`. For each recipe: align the default
model (``force``; the self-generated answers are cached under ``$SPFTUNE_HOME``), then generate greedily (32 new
tokens) on the validation splits of the project's harmful, over-refusal and benign prompts and print the keyword
judge's refusal rate on each, plus the over-refusal prompts that were refused. One alignment takes about 7 minutes
on the 2-core CI machine. Selection uses validation only; the test split is what the demo reports.

``--fold I/K`` holds out every K-th train prompt of each kind (those with index % K == I) from the alignment and
evaluates on them too (one fold of a K-fold cross-validation): the validation splits alone (40 / 30 / 40 prompts)
were too small and too easy to predict the test split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", help="JSON list of AlignConfig overrides")
    parser.add_argument("--out", default=None, help="Keep the aligned runs under this folder (default: a temp dir).")
    parser.add_argument("--fold", default=None, help="I/K: hold out train prompts with index %% K == I and evaluate on them.")
    parser.add_argument("--extra", action="append", default=[], metavar="KIND=FILE",
                        help="JSONL of more train prompts of KIND (benign, overrefusal) added to the alignment data "
                             "(never evaluated on); repeatable.")
    args = parser.parse_args()

    import spftune.train.align as align_module
    from spftune.data import load_prompts
    from spftune.eval import generate, is_refusal
    from spftune.models import load_model_and_tokenizer
    from spftune.train.align import AlignConfig, align

    held_out: dict[str, list[dict]] = {}
    extra: dict[str, list[dict]] = {}
    for item in args.extra:
        kind, _, path = item.partition("=")
        extra.setdefault(kind, []).extend(json.loads(line) for line in Path(path).read_text().splitlines()
                                          if line.strip())
    fold, k = (int(x) for x in args.fold.split("/")) if args.fold else (0, 0)
    full = align_module.alignment_prompts

    def with_fold_and_extra(cfg: AlignConfig) -> dict[str, list[dict]]:
        prompts = full(cfg)
        for kind, rows in prompts.items():
            held_out[kind] = [r for j, r in enumerate(rows) if k and j % k == fold]
            prompts[kind] = [r for j, r in enumerate(rows) if not (k and j % k == fold)]
        for kind, rows in extra.items():
            prompts[kind] += rows
        return prompts

    align_module.alignment_prompts = with_fold_and_extra  # align() looks the function up at call time

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="align-recipes-"))
    for i, overrides in enumerate(json.loads(args.recipes)):
        start = time.perf_counter()
        record = align(AlignConfig(out=str(root / f"recipe{i}"), force=True, **overrides), progress=False)
        align_s = time.perf_counter() - start
        model, tok = load_model_and_tokenizer(record["checkpoint"])
        rates: dict[str, dict[str, float]] = {"val": {}, "held_out": {}, "pooled": {}}
        refused = []
        missed_by_category: dict[str, int] = {}
        for kind in ("harmful", "overrefusal", "benign"):
            val_rows = load_prompts(kind, "val")
            n_val = len(val_rows)
            rows = val_rows + held_out.get(kind, [])
            prompts = [r["prompt"] for r in rows]
            flags = [is_refusal(o) for o in generate(model, tok, prompts, max_new_tokens=32, batch_size=40,
                                                     show_progress=False)]
            for name, part in (("val", flags[:n_val]), ("held_out", flags[n_val:]), ("pooled", flags)):
                if part:
                    rates[name][kind] = round(sum(part) / len(part), 3)
            if kind != "harmful":
                refused += [p for p, f in zip(prompts, flags, strict=True) if f]
            else:  # counts only: harmful prompts and the model's answers to them are never printed
                for row, f in zip(rows, flags, strict=True):
                    if not f:
                        cat = row.get("category", "?")
                        missed_by_category[cat] = missed_by_category.get(cat, 0) + 1
        print(json.dumps({"recipe": overrides, "fold": args.fold, "extra": {kind: len(v) for kind, v in extra.items()},
                          "align_s": round(align_s), "steps": record["train"]["steps"], "data": record["data"],
                          "refusal_rate": rates,
                          "harmful_not_refused_by_category": missed_by_category, "refused_safe": refused}), flush=True)


if __name__ == "__main__":
    main()
