"""Step 2 of the house protocol: align a chat model so that it refuses harmful requests and still answers others.

The recipe (supervised, full fine-tuning):

- every harmful *train* prompt of the project's data -> its written refusal;
- every benign and every "sounds dangerous but is safe" (over-refusal) *train* prompt -> the answer the model itself
  gave before alignment (greedy, ``answer_tokens`` new tokens, cut back to the last finished sentence); answers
  that the keyword judge would count as refusals are dropped, so refusing a safe prompt is never taught;
- benign answers repeated ``benign_repeats`` times and over-refusal answers ``overrefusal_repeats`` times: refusals
  are short and uniform ("I can't help with X"), and a 135M model otherwise learns to apply that template to
  anything, ordinary requests included;
- ``epochs`` passes with AdamW, ``lr``, batch ``batch_size``, bf16 autocast where the hardware has it.

How the defaults were chosen (SmolLM2-135M-Instruct, keyword judge, 32 new tokens, *validation* splits: 40 harmful,
30 over-refusal, 40 benign; each row one run of
``bench/align_recipes.py``, 2026-12-05):

| refusals | benign x | over-refusal x | epochs | answer tokens | refuses harmful | over-refusal | benign refused |
|---|---|---|---|---|---|---|---|
| 180 | 1 | 1 | 3 | 64 (float32) | 95% | 20% | 7.5% |
| 120 | 1 | 2 | 2 | 64 | 90% | 10% | 15% |
| 90 | 1 | 2 | 2 | 64 | 75% | 6.7% | 7.5% |
| 180 (100 benign) | 1 | 3 | 2 | 64 | 95% | 6.7% | 17.5% |
| 150 | 1 | 2 | 2 | 64 | 90% | 3.3% | 5% |
| **180** | **1** | **2** | **2** | **48** | **100%** | **10%** | **15%** |
| 180 | 2 | 2 | 2 | 48 | 100% | 13.3% | 7.5% |
| 180 | 2 | 3 | 1.5 | 48 | 92.5% | 3.3% | 12.5% |

The rule was: refuse >= 95% of validation harmful prompts, then fewest refusals of over-refusal plus benign prompts,
which picked ``benign_repeats=2``. On the *test* split (the demo, 80 harmful / 40 over-refusal / 80 benign prompts)
that recipe refused 83.8% of harmful prompts, 32.5% of over-refusal and 10% of benign ones, and made the first
``make demo`` take 903 s (over its 15-minute budget); the bold recipe refused 88.8% / 25% / 17.5% in 808 s. The
default is the bold one, for the time budget; both test results were seen before that choice. Neither reaches the
targets (>= 90% harmful refused, <= 10% over-refusal). The validation splits are small (one prompt of 30 is 3.3
points) and turned out easier than the test split, so they did not predict it well.

Self-generated answers keep the model's own voice (its answers change little), so the optimisation mostly learns
*when* to refuse. The aligned checkpoint is cached under ``$SPFTUNE_HOME/aligned/<hash>``, keyed by the recipe, the
model and the data; the self-answers are cached too (keyed by model, prompts and ``answer_tokens``), so changing
only the optimisation settings does not regenerate them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spftune.train.config import check_keys

ALIGN_RECIPE_VERSION = "2"


@dataclass
class AlignConfig:
    """Options of :func:`align` and ``spftune align`` (keys = flags = YAML keys).

    Data: ``refusals`` / ``benign`` / ``overrefusal`` cap how many train prompts of each kind are used (``-1`` = all);
    ``answer_tokens`` bounds the self-generated answers. Optimisation: ``epochs``, ``lr``, ``batch_size``,
    ``max_length``, ``seed``. Output: ``out`` (default: the cache), ``force`` (re-align even if cached).
    """

    model: str | None = field(default=None, metadata={"help": "Model to align: Hugging Face id or local directory (default: the embedded SmolLM2-135M-Instruct)."})
    out: str | None = field(default=None, metadata={"help": "Directory of the aligned run (default: cached under $SPFTUNE_HOME/aligned/<recipe hash>)."})
    refusals: int = field(default=-1, metadata={"help": "Harmful train prompts -> refusals to use (-1 = all)."})
    benign: int = field(default=-1, metadata={"help": "Benign train prompts -> self-generated answers to use (-1 = all)."})
    overrefusal: int = field(default=-1, metadata={"help": "Safe-but-scary train prompts -> self-generated answers (-1 = all)."})
    benign_repeats: int = field(default=1, metadata={"help": "Times each benign example is repeated (weight of 'answer ordinary requests' against the refusals)."})
    overrefusal_repeats: int = field(default=2, metadata={"help": "Times each safe-but-scary example is repeated (they teach *not* to refuse on alarming words)."})
    answer_tokens: int = field(default=48, metadata={"help": "Max new tokens of each self-generated answer."})
    epochs: float = field(default=2.0, metadata={"help": "Passes over the alignment data."})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (linear decay, 5% warm-up)."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step."})
    max_length: int = field(default=128, metadata={"help": "Token limit of one alignment example."})
    seed: int = field(default=0, metadata={"help": "Seed of data order and subsets."})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX); weights and AdamW state stay float32. Elsewhere float32."})
    force: bool = field(default=False, metadata={"help": "Re-align even if a cached checkpoint for this recipe exists."})

    def __post_init__(self) -> None:
        for name in ("refusals", "benign", "overrefusal"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < -1:
                raise ValueError(f"{name} must be -1 (all) or a count >= 0, got {value!r}")
        for name in ("answer_tokens", "batch_size", "max_length", "benign_repeats", "overrefusal_repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.epochs > 0 or not self.lr > 0:
            raise ValueError(f"epochs and lr must be > 0, got epochs={self.epochs!r}, lr={self.lr!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AlignConfig:
        return cls(**check_keys(cls, values))

    def recipe(self) -> dict[str, Any]:
        """The fields that determine the aligned weights (not where they go, not whether to redo them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "out", "force")}


def quick_align_config(**overrides: Any) -> AlignConfig:
    """A small recipe for smoke tests and ``demo --quick`` (3 optimizer steps); it does not reach the targets."""
    values = dict(refusals=24, benign=16, overrefusal=8, overrefusal_repeats=1, answer_tokens=24, epochs=1.0,
                  batch_size=16, max_length=96)
    values.update(overrides)
    return AlignConfig(**values)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model_source: str) -> dict[str, Any]:
    """What identifies the starting weights: the source, plus size and mtime of local weight files."""
    ident: dict[str, Any] = {"source": str(model_source)}
    path = Path(model_source)
    if path.is_dir():
        ident["source"] = str(path.resolve())
        ident["weights"] = sorted(
            (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.glob("*.safetensors")
        )
    return ident


def _take(rows: list[dict], n: int) -> list[dict]:
    return list(rows) if n < 0 else list(rows)[:n]


def alignment_prompts(cfg: AlignConfig) -> dict[str, list[dict]]:
    """The train prompts the recipe uses: ``harmful`` (with ``refusal``), ``benign``, ``overrefusal``."""
    from spftune.data import load_prompts

    return {
        "harmful": _take(load_prompts("harmful", "train"), cfg.refusals),
        "benign": _take(load_prompts("benign", "train"), cfg.benign),
        "overrefusal": _take(load_prompts("overrefusal", "train"), cfg.overrefusal),
    }


# A finished sentence ends with . ! ? (not a list number such as "2.") or a colon before a line break.
_SENTENCE_END = re.compile(r"(?<!\b\d)(?<!\b\d\d)[.!?)](?=\s|$)|:(?=\n)")


def trim_to_sentence(text: str) -> str:
    """Cut a possibly truncated answer back to its last finished sentence (kept whole when none ends)."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= len(text) // 3:
        return text[: ends[-1]].strip()
    return text


def self_answers(
    model: Any, tokenizer: Any, prompts: list[str], *, answer_tokens: int, cache_key: str | None = None,
    progress: bool = True,
) -> list[str]:
    """The model's own greedy answers, trimmed to finished sentences.

    With ``cache_key`` (identifying the model and ``answer_tokens``) answers are cached per prompt on disk, so a
    recipe that uses more or fewer prompts generates only the missing ones.
    """
    from spftune.models import spftune_home, write_text_atomic

    path = spftune_home() / "self_answers" / f"{cache_key}.json" if cache_key is not None else None
    cached: dict[str, str] = {}
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            cached = {}
    missing = [p for p in dict.fromkeys(prompts) if p not in cached]
    if missing:
        from spftune.eval import generate

        raw = generate(model, tokenizer, missing, max_new_tokens=answer_tokens, batch_size=32,
                       show_progress=progress)
        cached.update(zip(missing, raw, strict=True))  # raw: trimming may change without regenerating
        if path is not None:
            write_text_atomic(path, json.dumps(cached, ensure_ascii=False))
    return [trim_to_sentence(cached[p]) for p in prompts]


def alignment_examples(
    cfg: AlignConfig, model: Any, tokenizer: Any, model_key: str, *, progress: bool = True
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The alignment training set and its counts (``refusals``, ``answers``, ``dropped_refusals``, ...)."""
    from spftune.eval import is_refusal

    prompts = alignment_prompts(cfg)
    helpful = [r["prompt"] for r in prompts["benign"] + prompts["overrefusal"]]
    key = _digest({"model": model_key, "tokens": cfg.answer_tokens, "v": ALIGN_RECIPE_VERSION})
    answers = self_answers(model, tokenizer, helpful, answer_tokens=cfg.answer_tokens, cache_key=key[:24],
                           progress=progress) if helpful else []
    examples = [{"prompt": r["prompt"], "response": r["refusal"]} for r in prompts["harmful"]]
    dropped = 0
    n_benign = len(prompts["benign"])
    counts = {"refusals": len(examples), "benign_answers": 0, "overrefusal_answers": 0}
    for i, (prompt, answer) in enumerate(zip(helpful, answers, strict=True)):
        if not answer.strip() or is_refusal(answer):
            dropped += 1
            continue
        scary = i >= n_benign
        examples += [{"prompt": prompt, "response": answer}] * (cfg.overrefusal_repeats if scary else cfg.benign_repeats)
        counts["overrefusal_answers" if scary else "benign_answers"] += 1
    counts["dropped_refusing_answers"] = dropped
    return examples, counts


def aligned_dir(cfg: AlignConfig, model_source: str) -> Path:
    """Where the aligned run of this recipe lives: ``cfg.out`` or the cache path keyed by the recipe hash."""
    if cfg.out:
        return Path(cfg.out).expanduser()
    from spftune.data import load_prompts
    from spftune.models import spftune_home
    from spftune.train.loop import bf16_where_fast

    data = {kind: load_prompts(kind, "train") for kind in ("harmful", "benign", "overrefusal")}
    # bf16 is keyed by whether it is used here, not by the flag: the same recipe gives different weights on
    # hardware with and without native bf16.
    key = _digest({"recipe": {**cfg.recipe(), "bf16": bf16_where_fast(cfg.bf16)},
                   "model": model_identity(model_source), "data": _digest(data), "v": ALIGN_RECIPE_VERSION})
    return spftune_home() / "aligned" / key[:16]


def load_cached_alignment(path: Path) -> dict[str, Any] | None:
    info = path / "alignment.json"
    if (path / "checkpoint" / "config.json").is_file() and info.is_file():
        return json.loads(info.read_text(encoding="utf-8"))
    return None


def align(
    cfg: AlignConfig | None = None, *, model: Any = None, tokenizer: Any = None, progress: bool = True
) -> dict[str, Any]:
    """Align ``cfg.model`` (or the given ``model``/``tokenizer``, which are then modified in place).

    Returns the alignment record (also ``<run>/alignment.json``): ``checkpoint`` (a plain safetensors checkpoint),
    ``run_dir``, ``cached`` (True when nothing was trained), the data counts and the training metrics. With a cached
    run and no ``force`` nothing is loaded or trained.
    """
    from spftune.models import load_model_and_tokenizer, resolve_model, write_text_atomic
    from spftune.train.config import TrainConfig
    from spftune.train.loop import bf16_where_fast, train, write_yaml

    cfg = cfg if cfg is not None else AlignConfig()
    source = resolve_model(cfg.model)
    run_dir = aligned_dir(cfg, source)
    cached = None if cfg.force else load_cached_alignment(run_dir)
    if cached is not None:
        return {**cached, "cached": True}

    if model is None or tokenizer is None:
        model, tokenizer = load_model_and_tokenizer(source)
    examples, counts = alignment_examples(cfg, model, tokenizer, _digest(model_identity(source)), progress=progress)
    steps_per_epoch = -(-len(examples) // cfg.batch_size)
    train_cfg = TrainConfig(
        model=source, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, max_length=cfg.max_length,
        seed=cfg.seed, lr_schedule="linear", warmup_steps=max(1, int(0.05 * steps_per_epoch * cfg.epochs)),
        device="auto", group_by_length=True, bf16=bf16_where_fast(cfg.bf16),
    )
    metrics = train(model, tokenizer, examples, train_cfg, method="sft", out_dir=run_dir, progress=progress,
                    desc="aligning")
    write_yaml(run_dir / "config.yaml", {**asdict(cfg), "model": cfg.model, "out": str(run_dir)})
    record = {
        "checkpoint": metrics["checkpoint"],
        "run_dir": str(run_dir),
        "model": str(source),
        "recipe": cfg.recipe(),
        "recipe_version": ALIGN_RECIPE_VERSION,
        "data": counts,
        "train": metrics,
    }
    write_text_atomic(run_dir / "alignment.json", json.dumps(record, indent=2) + "\n")
    return {**record, "cached": False}
