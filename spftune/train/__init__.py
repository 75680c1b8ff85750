"""Fine-tuning: one parametrised training loop, methods registered by name, data loading and mixing, alignment.

>>> from spftune.train import TrainConfig, train, build_training_examples
>>> examples = build_training_examples("spftune-synthetic", limit=200, harmful_fraction=0.1)
>>> metrics = train(model, tokenizer, examples, TrainConfig(lr=1e-4, epochs=1), method="spf", out_dir="runs/x")
"""

from spftune.train.config import TrainConfig
from spftune.train.dataset import (
    attack_count,
    build_training_examples,
    load_examples,
    mix_harmful,
    read_examples,
    register_training_task,
    training_tasks,
)
from spftune.train.loop import train
from spftune.train.methods import available_methods, make_method, register_method

__all__ = [
    "TrainConfig",
    "attack_count",
    "available_methods",
    "build_training_examples",
    "load_examples",
    "make_method",
    "mix_harmful",
    "read_examples",
    "register_method",
    "register_training_task",
    "train",
    "training_tasks",
]
import spftune.baselines  # noqa: E402,F401  (registers the baseline methods: mix, safegrad, safelora, spf-*)
