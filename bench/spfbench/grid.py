"""The grid: methods, scenarios, modes and seeds, the options of a run, and the spec of each cell."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent  # the project
ALL_METHODS = ("sft", "spf", "spf-conflict-only", "spf-per-tensor", "spf-update", "mix", "spf+mix", "safegrad",
               "safelora")
LORA_ONLY = ("safelora",)
MODES = ("full", "lora")
HOUSE_TASK = "spftune-synthetic"
OVERREFUSAL_SETS = ("spftune-overrefusal", "spftune-benign")
PURE_BAD = Path("pure_bad") / "pure_bad.json"
METRICS = ("harmful_rate", "over_refusal_rate", "benign_refusal_rate", "task_accuracy")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    harmful_fraction: float = 0.0
    epochs_factor: float = 1.0
    pure_bad: int | None = None  # train on this many pure_bad examples only
    epochs: float | None = None  # fixed epochs (overrides the grid's epochs)


SCENARIOS = {s.name: s for s in (
    Scenario("benign", "benign utility task"),
    Scenario("mixed-0.05", "task with 5% pure_bad", harmful_fraction=0.05),
    Scenario("mixed-0.1", "task with 10% pure_bad", harmful_fraction=0.1),
    Scenario("mixed-0.2", "task with 20% pure_bad", harmful_fraction=0.2),
    Scenario("pure-bad", "pure_bad only (100 examples, 5 epochs)", pure_bad=100, epochs=5.0),
    Scenario("deep", "task with 10% pure_bad, 5x the epochs", harmful_fraction=0.1, epochs_factor=5.0),
)}


@dataclass
class BenchConfig:
    """Options of ``bench/run.py`` (flags = YAML keys). ``--quick`` / ``--full`` fill the grid; flags override."""

    out: str | None = field(default=None, metadata={"help": "Output directory (default: runs/bench-quick or runs/bench-full)."})
    model: str | None = field(default=None, metadata={"help": "Aligned starting checkpoint or run directory (default: run/cached `spftune align`)."})
    base_model: str | None = field(default=None, metadata={"help": "Unaligned model for safelora's alignment matrix (default: the default model)."})
    data_dir: str | None = field(default=None, metadata={"help": "Reference data folder with pure_bad/ (default: $SPFTUNE_DATA or ../shared/data)."})
    methods: list[str] = field(default_factory=lambda: ["sft", "spf", "mix", "safegrad"], metadata={"help": "Methods to compare (sft is always added: the ratios need it)."})
    scenarios: list[str] = field(default_factory=lambda: ["mixed-0.1"], metadata={"help": f"Scenarios: {', '.join(SCENARIOS)}."})
    modes: list[str] = field(default_factory=lambda: ["full"], metadata={"help": "full and/or lora."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds (data subset, mixing, order, LoRA init)."})
    task_examples: int = field(default=160, metadata={"help": "Synthetic-task training examples (before harmful replacement)."})
    epochs: float = field(default=1.0, metadata={"help": "Epochs of the task scenarios (deep: 5x; pure-bad: 5)."})
    lr: float = field(default=1e-4, metadata={"help": "Learning rate of full fine-tuning."})
    lora_lr: float = field(default=5e-4, metadata={"help": "Learning rate of LoRA fine-tuning."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    batch_size: int = field(default=8, metadata={"help": "Examples per optimizer step."})
    max_length: int = field(default=128, metadata={"help": "Token limit of one training example."})
    method_options: list[str] = field(default_factory=list, metadata={"help": "METHOD:KEY=VALUE options, e.g. mix:fraction=0.05."})
    safety_sets: list[str] = field(default_factory=lambda: ["spftune-harmful"], metadata={"help": "Held-out harmful sets (the first is the headline)."})
    eval_limit: int | None = field(default=40, metadata={"help": "Prompts per safety/over-refusal set (seeded subsample; 0 = all)."})
    task_eval: int = field(default=30, metadata={"help": "Synthetic-task test items for task accuracy."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per evaluation prompt."})
    eval_batch_size: int = field(default=40, metadata={"help": "Prompts per generation batch."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda."})
    force: bool = field(default=False, metadata={"help": "Recompute cells that already have a result."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep every cell's fine-tuned checkpoint (large)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the grid and its step counts; train nothing."})
    calibrate: list[str] = field(default_factory=list, metadata={"help": "With --dry-run: estimate the grid's time from the cells of these earlier --out folders."})
    report_only: bool = field(default=False, metadata={"help": "Rebuild results.json, BENCHMARKS.md and pareto.png from existing cells."})

    def __post_init__(self) -> None:
        for name in ("methods", "scenarios", "modes", "safety_sets", "method_options", "calibrate"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [v for v in value.replace(",", " ").split() if v])
        self.seeds = [int(s) for s in ([self.seeds] if isinstance(self.seeds, (int, str)) else self.seeds)]
        if isinstance(self.eval_limit, str):
            self.eval_limit = None if self.eval_limit.lower() in ("none", "all") else int(self.eval_limit)
        if self.eval_limit is not None and self.eval_limit <= 0:
            self.eval_limit = None  # --eval-limit 0: every prompt
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad:
            raise ValueError(f"unknown scenario {bad[0]!r}; choose from {', '.join(SCENARIOS)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
        if not self.methods or not self.scenarios or not self.modes or not self.seeds:
            raise ValueError("the grid is empty; give at least one method, scenario, mode and seed")
        if "sft" not in self.methods:
            self.methods = ["sft", *self.methods]  # every ratio is to sft in the same run
        if self.task_examples < 1 or self.batch_size < 1 or self.task_eval < 1:
            raise ValueError("task_examples, batch_size and task_eval must be positive")


QUICK: dict[str, Any] = {}  # the dataclass defaults are the quick grid
FULL: dict[str, Any] = dict(
    methods=list(ALL_METHODS), scenarios=list(SCENARIOS), modes=list(MODES), seeds=[0, 1, 2], task_examples=320,
    safety_sets=["spftune-harmful", "advbench"], eval_limit=100, task_eval=100,
)



def method_options(cfg: BenchConfig) -> dict[str, dict[str, str]]:
    """``--method-options METHOD:KEY=VALUE`` as {method: {key: value}}, plus safelora's base model."""
    out: dict[str, dict[str, str]] = {}
    for item in cfg.method_options:
        method, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not key.strip():
            raise ValueError(f"--method-options {item!r} is not METHOD:KEY=VALUE (e.g. mix:fraction=0.05)")
        out.setdefault(method.strip(), {})[key.strip()] = value.strip()
    if cfg.base_model and "base_model" not in out.get("safelora", {}):
        out.setdefault("safelora", {})["base_model"] = cfg.base_model
    return out


def cell_id(method: str, scenario: str, mode: str, seed: int) -> str:
    return f"{scenario}__{mode}__{method.replace('+', '-plus-')}__s{seed}"


def plan(cfg: BenchConfig) -> list[dict[str, Any]]:
    """The cells in run order: the aligned model first, then per seed/scenario/mode sft before the others."""
    import spftune.baselines  # noqa: F401  (registers the baselines, whether or not spftune.train does yet)
    from spftune.train import make_method

    options = method_options(cfg)
    for m in cfg.methods:  # a typo or a bad option fails here, before any work
        make_method(m, **{k: v for k, v in options.get(m, {}).items() if k != "base_model"})
    cells = [{"id": "aligned", "kind": "aligned"}]
    for seed in cfg.seeds:
        for scenario in cfg.scenarios:
            for mode in cfg.modes:
                for method in cfg.methods:
                    if method in LORA_ONLY and mode != "lora":
                        continue
                    cells.append({"id": cell_id(method, scenario, mode, seed), "kind": "train", "method": method,
                                  "scenario": scenario, "mode": mode, "seed": seed,
                                  "method_options": options.get(method, {})})
    return cells


def resolve_data_dir(cfg: BenchConfig, needed: bool) -> Path | None:
    candidates = [cfg.data_dir] if cfg.data_dir else [os.environ.get("SPFTUNE_DATA"), str(ROOT.parent / "shared" / "data")]
    for c in candidates:
        if c and (Path(c).expanduser() / PURE_BAD).is_file():
            return Path(c).expanduser().resolve()
    if needed:
        raise FileNotFoundError(f"no {PURE_BAD} under {', '.join(str(c) for c in candidates if c)}; pass --data-dir "
                                "with the reference data folder (../shared/data)")
    return Path(cfg.data_dir).expanduser().resolve() if cfg.data_dir else None


def train_settings(cfg: BenchConfig, scenario: Scenario, mode: str, seed: int, model: str,
                   data_dir: Path | None) -> dict[str, Any]:
    """The :class:`spftune.train.TrainConfig` fields of one cell."""
    lora = mode == "lora"
    return dict(
        model=model,
        data=str(data_dir / PURE_BAD) if scenario.pure_bad else HOUSE_TASK,
        limit=scenario.pure_bad or cfg.task_examples,
        harmful_fraction=scenario.harmful_fraction,
        attack_data=str(data_dir / PURE_BAD) if scenario.harmful_fraction > 0 else None,
        epochs=scenario.epochs if scenario.epochs is not None else cfg.epochs * scenario.epochs_factor,
        lr=cfg.lora_lr if lora else cfg.lr, lr_schedule="linear", batch_size=cfg.batch_size,
        max_length=cfg.max_length, seed=seed, device=cfg.device, lora=lora, lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
    )


def scenario_examples(train: dict[str, Any], scenario: Scenario) -> list[dict[str, str]]:
    """The training examples of one cell (before the method's ``prepare_data``)."""
    from spftune.train import build_training_examples, load_examples

    if scenario.pure_bad:
        rows = load_examples(train["data"], limit=scenario.pure_bad, seed=train["seed"])
        return [{**e, "source": "attack"} for e in rows]
    return build_training_examples(train["data"], limit=train["limit"], harmful_fraction=train["harmful_fraction"],
                                   attack_data=train["attack_data"], seed=train["seed"])


def cell_spec(cfg: BenchConfig, spf: Any, cell: dict[str, Any], model: str, data_dir: Path | None,
              out: Path) -> dict[str, Any]:
    spec = {**cell, "model": model, "data_dir": str(data_dir) if data_dir else None, "dir": str(out / "cells" / cell["id"]),
            "eval": dict(safety=cfg.safety_sets, overrefusal=list(OVERREFUSAL_SETS), limit=cfg.eval_limit,
                         task_eval=cfg.task_eval, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size),
            "device": cfg.device, "keep_checkpoint": cfg.keep_checkpoints}
    if cell["kind"] == "train":
        spec["train"] = train_settings(cfg, SCENARIOS[cell["scenario"]], cell["mode"], cell["seed"], model, data_dir)
        spec["spf"] = spf_dict(spf)
    return spec


def spf_dict(spf) -> dict[str, Any]:
    out = asdict(spf)
    out["safety_examples"] = [{"prompt": e["prompt"], "refusal": e["refusal"]} for e in out["safety_examples"]]
    return out
