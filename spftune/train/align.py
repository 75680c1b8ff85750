"""Step 2 of the house protocol: align a chat model so that it refuses harmful requests and still answers others.

The recipe (supervised fine-tuning of the top half of the model):

- every harmful *train* prompt of the project's data -> its written refusal;
- every benign and every "sounds dangerous but is safe" (over-refusal) *train* prompt -> the answer the model itself
  gave before alignment (greedy, ``answer_tokens`` new tokens, cut back to the last finished sentence); answers
  that the keyword judge would count as refusals are dropped, so refusing a safe prompt is never taught;
- benign answers repeated ``benign_repeats`` times and over-refusal answers ``overrefusal_repeats`` times: refusals
  are short and uniform ("I can't help with X"), and a 135M model otherwise learns to apply that template to
  anything, ordinary requests included; many *different* contrast prompts (300) work better than repeating few;
- the first response token weighs ``first_token_weight`` (10) times the others in the loss: every refusal starts
  with "I" and almost no self-answer does (2%), so that token *is* the decision to refuse, and in a plain mean over
  ~30 response tokens it is a small part of each example's loss;
- only the top ``train_top`` fraction of transformer blocks is trained (embeddings and lower blocks frozen, so the
  backward pass stops half-way: the first 40 steps of 16 examples took 216 s instead of 303 s on the 2-core CI
  machine without bf16);
- ``epochs`` passes with AdamW, ``lr``, batch ``batch_size``, bf16 autocast where the hardware has it.

How the defaults were chosen (recipe version 4, 2026-12-05). Selection data: the validation splits (40 harmful, 30
over-refusal, 40 benign) *plus one fold of the train split* (every 5th prompt of each kind held out of the
alignment: 36 harmful, 30 or 60 over-refusal, 36 benign), because the validation splits alone were too small and
too easy to predict the test split (recipe version 2 scored 100% / 10% / 15% on validation and 88.8% / 25% / 17.5%
on test). Keyword judge, 32 new tokens, greedy. Each row is one run of ``bench/align_recipes.py --fold 0/5`` on the
2-core CI machine (AMD EPYC, AVX2, no bf16, so float32); "train s" is the optimisation alone, "align s" includes
generating missing self-answers. Rates are pooled over validation + held-out fold (76 harmful, 90 over-refusal, 76
benign prompts: one prompt is 1.1-1.3 points).

| recipe | steps | train s | refuses harmful | over-refusal | benign refused |
|---|---|---|---|---|---|
| v2: 150 contrast prompts x2, 48-token answers, all weights, batch 16, 2 epochs, lr 1e-4 | 66 | 471 | 97.4% | 26.7% | 17.1% |
| + 150 more contrast prompts (300), x1 | 70 | 487 | 80.3% | 11.7% | 17.1% |
| + 3 epochs | 105 | 782 | 96.1% | 10.0% | 7.9% |
| top half only, 32-token answers, batch 8, 1.5 epochs, lr 1e-4 | 104 | 226 | 76.3% | 11.7% | 10.5% |
| same, lr 2e-4 | 104 | 230 | 84.2% | 6.7% | 9.2% |
| same, lr 3e-4 (v3) | 99 | ~200 | 89.5% | 8.9% | 9.2% |
| v3, 2 epochs | 132 | ~270 | 93.4% | 8.9% | 9.2% |
| v3, lr 5e-4 | 99 | 227 (align) | 90.8% | 11.1% | 7.9% |
| v3 + first-token weight 5 | 99 | 229 (align) | 92.1% | 8.9% | 7.9% |
| v3 + first-token weight 10 | 99 | 221 (align) | 92.1% | 6.7% | 5.3% |
| v3 + first-token weight 20 | 99 | 217 (align) | 90.8% | 5.6% | 2.6% |
| v3 + first-token weight 5, 2 epochs | 132 | 293 (align) | 93.4% | 5.6% | 7.9% |
| v3 + first-token weight 10, 2 epochs | 132 | 284 (align) | 94.7% | 8.9% | 7.9% |
| **v3 + first-token weight 10 + 100 harmful train prompts in new forms (v4)** | **117** | **256 (align)** | **96.1%** | **8.9%** | **11.8%** |
| same, first-token weight 20 | 117 | 267 (align) | 93.4% | 7.8% | 10.5% |
| v4 + 139 imperative benign prompts | 143 | 393 (align) | 93.4% | 7.8% | 5.3% |

What the rows say: more optimisation sharpens the boundary on all three rates (3 epochs), but 782 s of training does
not fit the demo's 15 minutes on this machine; training the top half with small batches and a larger learning rate
gets most of the gain in a quarter of the time. Weighting the first response token is free and lowers over-refusal
and benign refusal (more so the larger the weight) without losing harmful refusals. The 100 new harmful prompts
(imperatives, creative-writing and role-play framings, blunt and long requests, which the first 180 lacked; written
without reading val or test) raise harmful refusals by 4 points at a cost of 6.5 points of benign refusal, which
139 imperative benign prompts take back, but those add ~125 s to the first demo (self-answers and 26 steps), more
than the 15-minute budget leaves on this machine. The held-out fold comes from the same train distribution, so it
cannot show what the new forms are for: the test split's misses in session 3 were concentrated in a form the train
split lacked (self-harm requests phrased as writing tasks), which is why v4 keeps them. The bold row is the
default; its test-split result is in the README (the demo). Single runs: differences of 1-3 points are noise.

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

ALIGN_RECIPE_VERSION = "4"


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
    overrefusal_repeats: int = field(default=1, metadata={"help": "Times each safe-but-scary example is repeated (they teach *not* to refuse on alarming words)."})
    answer_tokens: int = field(default=32, metadata={"help": "Max new tokens of each self-generated answer."})
    epochs: float = field(default=1.5, metadata={"help": "Passes over the alignment data."})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (linear decay, 5% warm-up)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per optimizer step."})
    train_top: float = field(default=0.5, metadata={"help": "Fraction of transformer blocks trained, from the top (0.5 = the top half; embeddings and lower blocks stay frozen, so the backward pass stops early: ~30% less compute); 1.0 = every weight."})
    first_token_weight: float = field(default=10.0, metadata={"help": "Loss weight of the first response token, where refusing or answering is decided (every refusal starts with 'I', almost no answer does); 1 = plain mean over the response."})
    max_length: int = field(default=128, metadata={"help": "Token limit of one alignment example."})
    seed: int = field(default=0, metadata={"help": "Seed of data order and subsets."})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX); weights and AdamW state stay float32. Elsewhere float32."})
    force: bool = field(default=False, metadata={"help": "Re-align even if a cached checkpoint for this recipe exists."})

    def __post_init__(self) -> None:
        for name in ("refusals", "benign", "overrefusal"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < -1:
                raise ValueError(f"{name} must be -1 (all) or a count >= 0, got {value!r}")
        if not isinstance(self.train_top, (int, float)) or not 0 < self.train_top <= 1:
            raise ValueError(f"train_top must be a fraction in (0, 1], got {self.train_top!r}")
        for name in ("answer_tokens", "batch_size", "max_length", "benign_repeats", "overrefusal_repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.epochs > 0 or not self.lr > 0:
            raise ValueError(f"epochs and lr must be > 0, got epochs={self.epochs!r}, lr={self.lr!r}")
        if isinstance(self.first_token_weight, bool) or not isinstance(self.first_token_weight, (int, float)) \
                or not self.first_token_weight >= 0:
            raise ValueError(f"first_token_weight must be a number >= 0, got {self.first_token_weight!r}")

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


def decoder_blocks(model: Any) -> Any:
    """The model's list of transformer blocks: the longest ``nn.ModuleList`` (``model.model.layers`` in Llama-style
    models, ``transformer.h`` in GPT-2-style ones)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError("train_top: the model has no list of transformer blocks; use train_top 1.0")
    return max(lists, key=len)


def freeze_below_top(model: Any, n: int) -> int:
    """Leave only the top ``n`` blocks (and the final norm after them) trainable. Returns the trainable count.

    Embeddings stay frozen (tied to the output head in many small models), so the backward pass stops at the lowest
    trained block.
    """
    import torch

    blocks = decoder_blocks(model)
    if n > len(blocks):
        raise ValueError(f"train_top: {n} blocks asked, the model has {len(blocks)}")
    trained = {id(p) for block in blocks[-n:] for p in block.parameters()}
    # the final norm sits after the last block; it has no name in common across architectures, so take the
    # parameters that are neither in a block nor an embedding/head weight
    in_blocks = {id(p) for p in blocks.parameters()}
    io = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out_head = getattr(model, "get_output_embeddings", lambda: None)()
    if out_head is not None:
        io.add(id(out_head.weight))
    trained |= {id(p) for p in model.parameters() if id(p) not in in_blocks and id(p) not in io}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
    was_trainable = {id(p): p.requires_grad for p in model.parameters()}
    if cfg.train_top < 1:
        n_top = max(1, round(cfg.train_top * len(decoder_blocks(model))))
        counts["trained_parameters"] = freeze_below_top(model, n_top)
    steps_per_epoch = -(-len(examples) // cfg.batch_size)
    train_cfg = TrainConfig(
        model=source, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, max_length=cfg.max_length,
        seed=cfg.seed, lr_schedule="linear", warmup_steps=max(1, int(0.05 * steps_per_epoch * cfg.epochs)),
        device="auto", group_by_length=True, bf16=bf16_where_fast(cfg.bf16), first_token_weight=cfg.first_token_weight,
    )
    try:
        metrics = train(model, tokenizer, examples, train_cfg, method="sft", out_dir=run_dir, progress=progress,
                        desc="aligning")
    finally:  # the caller's model object is modified in place: give back its trainable flags
        for p in model.parameters():
            p.requires_grad_(was_trainable[id(p)])
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
