"""The one training loop of spftune: every method (``sft``, ``spf``, baselines) runs through it.

One optimizer step, in this order (as nanoGPT, and as the SPF paper needs it):
forward/backward of ``grad_accum`` micro-batches (loss weighted by labelled tokens, so the accumulated gradient
equals the gradient of the whole batch) -> ``method.after_backward`` (SPF filters the complete gradient here)
-> clip to ``max_grad_norm`` -> ``optimizer.step()`` -> ``method.after_step``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from spftune.core.capture import forward_accepts
from spftune.core.chat import (
    IGNORE_INDEX,
    collate,
    encode_example,
    has_chat_template,
    loss_window,
    pad_token_id,
    response_loss,
)
from spftune.core.config import SPFConfig
from spftune.train.config import TrainConfig, parse_method_options
from spftune.train.methods import make_method


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast is likely faster than float32 on ``device``.

    CUDA: when the GPU supports bf16. CPU: when it has native bf16 dot products (AVX512-BF16 or AMX); elsewhere
    oneDNN emulates bf16 and autocast is slower than float32. Measured on the 2-core CI machine (AVX512-BF16):
    one training step of SmolLM2-135M, 16 x 100 tokens, 8.7 s float32 vs 5.2 s bf16 autocast.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_where_fast(requested: bool, device: str = "auto") -> bool:
    """``requested`` and :func:`fast_bf16` on ``device``: the ``bf16`` option of ``spftune align`` and the demo."""
    return requested and fast_bf16(resolve_device(device))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def encode_examples(
    tokenizer: Any, examples: list[dict[str, str]], max_length: int, system: str | None = None
) -> tuple[list[dict[str, list[int]]], list[str], int]:
    """Tokenize examples; returns (encoded, their sources, number skipped because the prompt fills max_length)."""
    encoded, sources, skipped = [], [], 0
    for e in examples:
        try:
            encoded.append(encode_example(tokenizer, e["prompt"], e["response"], max_length, e.get("system") or system))
        except ValueError:
            skipped += 1
            continue
        sources.append(e.get("source", "task"))
    if not encoded:
        raise ValueError(
            f"none of the {len(examples)} training examples fits max_length={max_length} tokens with room for a "
            "response; raise --max-length or use shorter prompts"
        )
    return encoded, sources, skipped


def lr_lambda(schedule: str, warmup: int, total: int):
    def factor(step: int) -> float:  # step = number of optimizer steps taken so far
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _micro_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool = False):
    """Endless stream of (epoch, index list): a fresh seeded permutation per epoch, cut into micro-batches.

    With ``group_by_length`` each run of 16 micro-batches of the permutation is sorted by length before it is cut
    (so a batch holds similar lengths and little padding), and the order of the micro-batches is shuffled again.
    """
    n = len(lengths)
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=gen).tolist()
        if group_by_length:
            mega = batch_size * 16
            order = [i for k in range(0, n, mega) for i in sorted(order[k : k + mega], key=lambda j: -lengths[j])]
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        if group_by_length:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        for batch in batches:
            yield epoch, batch
        epoch += 1


def wrap_lora(model: Any, cfg: TrainConfig) -> Any:
    """Wrap ``model`` with PEFT LoRA adapters (in place on the base model's modules)."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets or "all-linear"
    if isinstance(targets, list) and targets == ["all-linear"]:
        targets = "all-linear"
    config = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where torch has it for these tensors (about 4x faster than foreach on CPU)."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # a dtype/device the fused kernel does not cover
            pass
    return torch.optim.AdamW(params, **kwargs)


def spf_config_dict(spf_config: SPFConfig) -> dict[str, Any]:
    """``SPFConfig`` as ``spf_*`` keys (the CLI flags), safety examples as plain dicts."""
    out = {}
    for key, value in asdict(spf_config).items():
        out[f"spf_{key}"] = value
    return out


def run_config(cfg: TrainConfig, spf_config: SPFConfig | None, method_name: str, **extra: Any) -> dict[str, Any]:
    """The resolved configuration of a run, keyed like the CLI flags, as written to ``config.yaml``."""
    out = {**cfg.to_dict(), "method": method_name}
    out.update(spf_config_dict(spf_config if spf_config is not None else SPFConfig()))
    out.update(extra)
    return out


def write_yaml(path: Path, values: dict[str, Any]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _peak_rss_mb() -> float | None:
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(rss / 1024 if sys.platform != "darwin" else rss / 2**20, 1)
    except (ImportError, OSError):
        return None


def train(
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, str]],
    cfg: TrainConfig | None = None,
    *,
    method: str | Any = "sft",
    spf_config: SPFConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``examples`` (``{"prompt", "response"}`` dicts) and return run metrics.

    ``method`` is a registered name (``"sft"``, ``"spf"``, ...) or a method object (see
    :mod:`spftune.train.methods`). With ``cfg.lora`` the adapters are merged into ``model`` at the end, so
    ``model`` always ends up holding the fine-tuned weights as plain modules.

    With ``out_dir``: writes ``config.yaml`` (resolved), ``log.jsonl`` (one record per optimizer step: ``step``,
    ``loss``, ``lr``, ``grad_norm`` before clipping, ``seconds``, the method's statistics) and the final checkpoint
    in ``out_dir/checkpoint`` (safetensors; loads with plain ``AutoModelForCausalLM.from_pretrained``).

    Returns ``steps``, ``examples``, ``attack_examples``, ``seconds_per_step`` (median), ``train_seconds``,
    ``first_loss``, ``final_loss`` (mean of the last 10% of steps), ``checkpoint`` (or None) and method summaries.
    """
    cfg = cfg if cfg is not None else TrainConfig()
    if isinstance(method, str):
        method = make_method(method, spf_config=spf_config, **parse_method_options(cfg.method_options))
    method_name = getattr(method, "name", type(method).__name__)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(out / "config.yaml", run_config(cfg, getattr(method, "config", spf_config), method_name,
                                                   out=str(out)))

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device)

    if hasattr(method, "prepare_data"):
        examples = method.prepare_data(list(examples))
    if not examples:
        raise ValueError("no training examples; pass a dataset with at least one prompt/response row")
    encoded, sources, skipped = encode_examples(tokenizer, examples, cfg.max_length, cfg.system)
    pad_id = pad_token_id(tokenizer)

    peft_model = wrap_lora(model, cfg) if cfg.lora else None
    trained = peft_model if peft_model is not None else model
    if hasattr(method, "setup"):
        method.setup(trained, tokenizer)
    params = [p for p in trained.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; unfreeze some or use --lora")
    optimizer = make_optimizer(params, cfg)
    micro_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, cfg.warmup_steps, total))

    from tqdm.auto import tqdm

    stream = _micro_batches([len(e["input_ids"]) for e in encoded], cfg.batch_size, cfg.seed, cfg.group_by_length)
    log_file = (out / "log.jsonl").open("w", encoding="utf-8") if out is not None else None
    records: list[dict[str, Any]] = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    # Run the output head only on the positions the loss reads (prompt positions carry no loss).
    head_window = forward_accepts(trained, "logits_to_keep")
    trained.train()
    bar = tqdm(range(total), desc=desc or f"fine-tuning ({method_name})", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step in bar:
            t0 = time.perf_counter()
            micro = [next(stream) for _ in range(cfg.grad_accum)]
            batches = [collate([encoded[i] for i in idx], pad_id) for _, idx in micro]
            n_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            loss_sum = 0.0
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                weight = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) / max(1, n_tokens)
                keep = {"logits_to_keep": loss_window(batch["labels"])} if head_window else {}
                with autocast:
                    logits = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     **keep).logits
                loss = response_loss(logits, batch["labels"], cfg.first_token_weight) * weight
                loss.backward()
                loss_sum += float(loss.detach())
                del logits, loss
            stats = method.after_backward(trained, step) if hasattr(method, "after_backward") else {}
            if cfg.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            else:
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if hasattr(method, "after_step"):
                stats = {**(stats or {}), **(method.after_step(trained, step) or {})}
            seconds = time.perf_counter() - t0
            record = {
                "step": step + 1,
                "epoch": round((step + 1) * cfg.grad_accum / micro_per_epoch, 3),
                "loss": round(loss_sum, 6),
                "lr": lr,
                "grad_norm": round(grad_norm, 6),
                "tokens": n_tokens,
                "attack_examples": sum(sources[i] == "attack" for _, idx in micro for i in idx),
                "seconds": round(seconds, 4),
                **(stats or {}),
            }
            records.append(record)
            if log_file is not None:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.set_postfix(loss=f"{loss_sum:.3f}", s_step=f"{seconds:.2f}")
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    train_seconds = time.perf_counter() - start

    summary = method.finish(trained) if hasattr(method, "finish") else {}
    if peft_model is not None:
        peft_model.merge_and_unload()  # in place: `model` now holds the merged weights as plain Linear layers
    model.eval()

    checkpoint = None
    if out is not None:
        from spftune.models import save_checkpoint

        checkpoint = str(save_checkpoint(model, tokenizer, out / "checkpoint"))

    tail = records[-max(1, len(records) // 10):]
    result: dict[str, Any] = {
        "method": method_name,
        "steps": len(records),
        "examples": len(encoded),
        "attack_examples": sum(s == "attack" for s in sources),
        "skipped_examples": skipped,
        "chat_template": has_chat_template(tokenizer),
        "seconds_per_step": round(statistics.median(r["seconds"] for r in records), 4),
        "train_seconds": round(train_seconds, 2),
        "first_loss": records[0]["loss"],
        "final_loss": round(sum(r["loss"] for r in tail) / len(tail), 6),
        "peak_rss_mb": _peak_rss_mb(),
        "checkpoint": checkpoint,
    }
    if any("spf_conflict" in r for r in records):
        # Share of steps with a global conflict, and with anything projected (equal under the global gate, more
        # under per_tensor).
        for key in ("conflict", "projected"):
            result[f"spf_{key}_rate"] = round(sum(bool(r.get(f"spf_{key}")) for r in records) / len(records), 4)
        removed = [r["spf_removed_fraction"] for r in records if "spf_removed_fraction" in r]
        if removed:
            result["spf_removed_fraction_mean"] = round(sum(removed) / len(removed), 6)
        secs = [r["spf_seconds"] for r in records if "spf_seconds" in r]
        if secs:
            result["spf_seconds_per_step"] = round(statistics.median(secs), 4)
    result.update(summary or {})
    return result
