"""The configuration of one fine-tuning run: one dataclass, whose field names are the CLI flags and the YAML keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

LR_SCHEDULES = ("linear", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Options of :func:`spftune.train.train` and of ``spftune finetune`` (``lr`` is ``--lr``, ``batch_size`` is
    ``--batch-size``; a YAML file passed with ``--config`` uses the same keys, with ``_`` or ``-``).

    Model and data
        model: Hugging Face id or local directory; ``None`` = the embedded default model.
        data: a JSONL file (``{"messages": [...]}`` or ``{"prompt", "response"}`` per line), a JSON list of such
            records (Alpaca ``instruction``/``input``/``output`` too), a CSV with ``prompt`` and ``response``
            columns, or a registered task name (``spftune-synthetic``).
        limit: use at most this many task examples (a seeded random subset); ``None`` = all.
        harmful_fraction: share p of attack examples in the final training mix, exactly ``p * N`` (rounded half up) of the N
            examples (the task examples fill the rest).
        attack_data: file of attack examples (same formats as ``data``); ``None`` = the project's built-in shallow
            attack (harmful requests with affirmative openings only).

    Optimisation (defaults that differ from Hugging Face ``TrainingArguments``: ``lr`` 5e-5 is kept, but
    ``max_grad_norm`` 1.0 is applied after the method's gradient hook, e.g. after the SPF projection)
        epochs, max_steps (``> 0`` overrides epochs), lr, lr_schedule (linear decay to 0 | constant), warmup_steps,
        batch_size (per micro-batch), grad_accum (micro-batches per optimizer step), max_grad_norm (``0`` = no
        clipping), weight_decay, adam_beta1, adam_beta2, max_length (tokens per example), seed.

    LoRA (not in the SPF paper; the filter covers LoRA's ``lora_A``/``lora_B`` like any linear layer)
        lora, lora_r, lora_alpha, lora_dropout, lora_targets (``all-linear`` or a list of module names).
        The saved checkpoint is the merged full model, loadable with plain ``from_pretrained``.
    """

    # model and data
    model: str | None = field(default=None, metadata={"help": "Hugging Face id or local model directory (default: the embedded SmolLM2-135M-Instruct)."})
    data: str | None = field(default=None, metadata={"help": "Training data: JSONL/JSON/CSV file of prompt/response or chat messages, or a task name (spftune-synthetic)."})
    method: str = field(default="sft", metadata={"help": "Training method, registered by name: sft | spf | ... (see spftune.train.available_methods())."})
    method_options: list[str] | None = field(default=None, metadata={"help": "Extra KEY=VALUE options passed to the method's factory."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many task examples (seeded subset)."})
    harmful_fraction: float = field(default=0.0, metadata={"help": "Share p in [0, 1] of attack examples in the training mix (exactly p*N rounded half up, of N)."})
    attack_data: str | None = field(default=None, metadata={"help": "Attack examples file (same formats as --data); default: the built-in shallow attack."})
    system: str | None = field(default=None, metadata={"help": "System prompt for every training example (default: the chat template's own)."})
    # optimisation
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training mix (fractions allowed)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; > 0 overrides --epochs."})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    lr_schedule: str = field(default="linear", metadata={"help": "linear (warm up, then decay to 0) | constant (after warm-up)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    batch_size: int = field(default=8, metadata={"help": "Examples per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches accumulated per optimizer step."})
    first_token_weight: float = field(default=1.0, metadata={"help": "Loss weight of each example's first response token, where a chat model decides between answering and refusing (1 = plain mean over response tokens)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the (filtered) gradient to this global norm; 0 = no clipping."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (the SPF paper may use 0.5)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    group_by_length: bool = field(default=False, metadata={"help": "Batch examples of similar length together (less padding, faster steps; order stays seeded-random)."})
    max_length: int = field(default=256, metadata={"help": "Token limit of one formatted example (longer ones are truncated)."})
    seed: int = field(default=0, metadata={"help": "Seed of data order, mixing and initialisation."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available) | cpu | cuda."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (off by default; slower than float32 on most CPUs)."})
    # LoRA
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights (saved merged)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_targets: list[str] | None = field(default=None, metadata={"help": "LoRA target module names (default: all-linear)."})

    def __post_init__(self) -> None:
        hf = self.harmful_fraction
        if isinstance(hf, bool) or not isinstance(hf, (int, float)) or not 0.0 <= float(hf) <= 1.0:
            raise ValueError(
                f"harmful_fraction must be a number in [0, 1] (the share of attack examples), got {hf!r}"
            )
        self.harmful_fraction = float(hf)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r} is not one of {', '.join(DEVICES)}")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {self.limit!r}")
        if not self.epochs > 0 and self.max_steps <= 0:
            raise ValueError(f"epochs must be > 0 (or set max_steps > 0), got epochs={self.epochs!r}")
        for name in ("lr", "max_grad_norm", "weight_decay", "lora_dropout", "first_token_weight"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if isinstance(self.lora_targets, str):
            self.lora_targets = [self.lora_targets]
        if isinstance(self.method_options, str):
            self.method_options = [self.method_options]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (a YAML file); keys may use ``-`` or ``_``; unknown keys are rejected."""
        return cls(**check_keys(cls, values))


def check_keys(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``-`` in keys turned into ``_``; ``ValueError`` naming any key that ``cls`` lacks."""
    known = {f.name for f in fields(cls)}
    out = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(known)}")
    return out


def parse_method_options(options: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; ``ValueError`` on an item without ``=``."""
    out: dict[str, str] = {}
    for item in options or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method option {item!r} is not KEY=VALUE; write e.g. --method-options ratio=0.05")
        out[key.strip()] = value.strip()
    return out
