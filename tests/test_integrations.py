"""SPF attached to transformers.Trainer and TRL's SFTTrainer: a few real steps on tiny models."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model, make_tokenizer

from spftune import SPFCallback, SPFConfig, add_spf_callback
from spftune.core.chat import collate, encode_example

PAIRS = [
    ("What is 2 + 2?", "2 + 2 is 4."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Say hello in French.", "Bonjour!"),
    ("What is the capital of Italy?", "Rome."),
] * 4


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def training_args(tmp_path, **overrides):
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=5e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        max_grad_norm=1.0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_trainer_with_callback_projects_once_per_optimizer_step(tmp_path, lora):
    from transformers import Trainer

    tok = make_tokenizer()
    model = make_model("llama", lora=lora)
    rows = [encode_example(tok, p, r, 96) for p, r in PAIRS]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=ListDataset(rows),
        data_collator=lambda batch: collate(batch, tok.pad_token_id),
    )
    callback = add_spf_callback(trainer, SPFConfig(rank=4, gate="always"), tokenizer=tok)
    trainer.train()

    # 3 optimizer steps x 2 micro-batches: the filter ran once per optimizer step, on the accumulated gradient.
    assert callback.filter.step == 3 and len(callback.history) == 3
    assert all(s["projected"] for s in callback.history)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed
    logged = [h for h in trainer.state.log_history if "spf/conflict_rate" in h]
    assert len(logged) == 3
    for h in logged:
        assert h["spf/projected_rate"] == 1.0
        assert 0.0 <= h["spf/removed_fraction"] <= 1.0
        assert h["spf/grad_norm_after"] <= h["spf/grad_norm_before"] + 1e-6
        # Trainer clipped to 1.0 before the callback; projection can only shrink the norm.
        assert h["spf/grad_norm_after"] <= 1.0 + 1e-4


def test_trainer_callback_from_constructor_uses_processing_class(tmp_path):
    from transformers import Trainer

    tok = make_tokenizer()
    model = make_model("qwen2")
    rows = [encode_example(tok, p, r, 96) for p, r in PAIRS]
    callback = SPFCallback(SPFConfig(rank=2))
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path, max_steps=2, gradient_accumulation_steps=1),
        train_dataset=ListDataset(rows),
        data_collator=lambda batch: collate(batch, tok.pad_token_id),
        processing_class=tok,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.filter.step == 2
    assert sum("spf/dot" in h for h in trainer.state.log_history) == 2


def test_trl_sft_trainer_with_callback(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok = make_tokenizer()
    model = make_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = Dataset.from_list(
        [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        max_length=96,
    )
    callback = SPFCallback(SPFConfig(rank=4, gate="always"))
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[callback])
    trainer.train()
    assert callback.filter.step == 3
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    logged = [h for h in trainer.state.log_history if "spf/removed_fraction" in h]
    assert len(logged) == 3 and all(h["spf/removed_fraction"] > 0 for h in logged)
