"""Resolve a model name, load a (model, tokenizer) pair, and save checkpoints that plain transformers can load.

Loading is conservative on purpose: safetensors only (``use_safetensors=True``, no pickle), no remote code unless
the caller asks for it, and the hub is contacted only for a name that is neither the default model nor a local
directory, and only when Hugging Face is not set offline.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from spftune.models.default import DEFAULT_MODEL, default_model_path
from spftune.models.storage import atomic_dir

# "name" or "org/name" as the Hugging Face hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_TRUTHY = {"1", "true", "yes", "on"}


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or os.sep in name.replace("/", "", 1)
        or name.count("/") > 1
        or (os.altsep is not None and os.altsep in name)
        or not _HUB_ID.match(name)
    )


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Turn what the user passed as ``--model`` into something ``from_pretrained`` accepts.

    - ``None`` or ``DEFAULT_MODEL`` -> the cached default checkpoint (converted on first use);
    - an existing local directory -> itself;
    - a hub id (``org/name``) -> itself, only when Hugging Face is not offline.

    Raises ``FileNotFoundError`` for a path that does not exist or is not a directory, and ``ValueError`` for a hub
    id while offline.
    """
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return str(default_model_path())
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise FileNotFoundError(
            f"model path {name} is a file; pass the directory that holds config.json and the *.safetensors weights"
        )
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"model path {name} does not exist; pass a Hugging Face id or a local directory"
        )
    if hf_offline():
        raise ValueError(
            f"model {name} is not a local directory and Hugging Face is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE "
            "set); pass a local directory, or unset the offline variables to download it from the hub"
        )
    return name


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token its EOS token as pad (generation pads on the left, masked out)."""
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: Any = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``; see :func:`resolve_model` for what ``name_or_path`` may be.

    ``dtype`` defaults to ``torch.float32``. Weights must be safetensors. The model is returned in eval mode on
    ``device``; the tokenizer has a pad token (its EOS token if it had none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    source = resolve_model(name_or_path)
    local = Path(source).is_dir()
    if local and not (Path(source) / "config.json").is_file():
        raise FileNotFoundError(
            f"model directory {source} has no config.json; pass a directory written by save_pretrained "
            "(config.json, *.safetensors, tokenizer files)"
        )
    if local and not any(Path(source).glob("*.safetensors")):
        raise FileNotFoundError(
            f"model directory {source} has no *.safetensors weights; spftune loads safetensors only (re-save the "
            "model with save_pretrained, which writes safetensors)"
        )
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    model.to(device)
    model.eval()
    return model, ensure_pad_token(tokenizer)


def _is_peft_model(model: Any) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def save_checkpoint(model: Any, tokenizer: Any, out_dir: str | os.PathLike) -> Path:
    """Save ``model`` + ``tokenizer`` (with its chat template) as a plain safetensors checkpoint, atomically.

    The result loads with plain ``AutoModelForCausalLM.from_pretrained(out_dir)``. A PEFT (LoRA) model is saved
    **merged**: a copy of it is merged with ``merge_and_unload`` and the full model is written, so no PEFT install is
    needed to load it and the live model keeps its adapters (save the adapter alone with the PEFT model's own
    ``save_pretrained`` if that is what you want). An existing ``out_dir`` is replaced only once the new checkpoint is
    complete; on any error nothing at ``out_dir`` changes and no temporary directory is left behind.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"checkpoint path {out} is a file; pass a directory path for the checkpoint")
    to_save = copy.deepcopy(model).merge_and_unload() if _is_peft_model(model) else model
    with atomic_dir(out) as tmp:
        to_save.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
