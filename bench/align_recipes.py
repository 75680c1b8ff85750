"""Compare alignment recipes on the validation splits (how the defaults of ``spftune align`` were chosen).

    .venv/bin/python bench/align_recipes.py '[{"benign_repeats": 2}, {"refusals": 150, "benign_repeats": 1}]'

Each JSON object overrides fields of :class:`spftune.train.align.AlignConfig`. For each recipe: align the default
model (``force``; the self-generated answers are cached under ``$SPFTUNE_HOME``), then generate greedily (32 new
tokens) on the validation splits of the project's harmful, over-refusal and benign prompts and print the keyword
judge's refusal rate on each, plus the over-refusal prompts that were refused. One alignment takes about 7 minutes
on the 2-core CI machine. Selection uses validation only; the test split is what the demo reports.
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
    args = parser.parse_args()

    from spftune.data import load_prompts
    from spftune.eval import generate, is_refusal
    from spftune.models import load_model_and_tokenizer
    from spftune.train.align import AlignConfig, align

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="align-recipes-"))
    for i, overrides in enumerate(json.loads(args.recipes)):
        start = time.perf_counter()
        record = align(AlignConfig(out=str(root / f"recipe{i}"), force=True, **overrides), progress=False)
        align_s = time.perf_counter() - start
        model, tok = load_model_and_tokenizer(record["checkpoint"])
        rates, refused = {}, []
        for kind in ("harmful", "overrefusal", "benign"):
            prompts = [r["prompt"] for r in load_prompts(kind, "val")]
            flags = [is_refusal(o) for o in generate(model, tok, prompts, max_new_tokens=32, batch_size=40,
                                                     show_progress=False)]
            rates[kind] = round(sum(flags) / len(flags), 3)
            if kind == "overrefusal":
                refused = [p for p, f in zip(prompts, flags, strict=True) if f]
        print(json.dumps({"recipe": overrides, "align_s": round(align_s), "steps": record["train"]["steps"],
                          "data": record["data"], "val_refusal_rate": rates, "refused_overrefusal": refused}),
              flush=True)


if __name__ == "__main__":
    main()
