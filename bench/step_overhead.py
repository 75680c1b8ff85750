"""Cost of one SPF optimizer step against a plain SFT step, on the default model.

    .venv/bin/python bench/step_overhead.py [--steps 4] [--batch 8] [--seq 128] [--json OUT.json]

Timing: one process, one model per setting (full fine-tuning, LoRA r=16 on all linear layers); the methods are
interleaved step by step (plain, SPF factored with the paper's global gate, SPF factored with the gate forced on,
SPF reference), so drift and noise from other load hit them alike; the median over ``--steps`` measured steps
(after one warm-up step each) is reported, with the ratio to plain SFT in the same run.

Arithmetic floor (on by default, ``--no-flops`` skips it; one counted step per setting): the matmul FLOPs of a plain
step (forward + backward) and of the exact SPF work added to it, counted by
``torch.utils.flop_counter.FlopCounterMode``: the safety pass (forward, backward to the layer outputs), the bases'
matmuls, and the gate plus the projection (gate forced on, the worst case). QR / eigh calls and element-wise work
(AdamW, norms) are not counted, so ``1 + extra / plain`` is a lower bound on the time ratio any hardware can reach
at this batch, unless it runs SPF's small matmuls (T rows) faster per FLOP than the batch's large ones.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` per method in this process. On CPU there is no allocator
counter, so each method runs a few steps in a fresh subprocess and reports its peak resident set size (ru_maxrss);
the ratio is to the plain subprocess. The subprocess includes Python, torch and the model, so the ratio is a
conservative (diluted) view of the extra memory; the extra bytes are printed too.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

METHODS = ("plain", "spf-factored", "spf-factored-always", "spf-reference")


def build(setting: str):
    from peft import LoraConfig, get_peft_model

    from spftune.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(None)
    model.train()
    if setting == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, tok, opt


def make_filter(method: str, model, tok):
    from spftune import SPFConfig, SPFFilter

    if method == "plain":
        return None
    cfg = SPFConfig(
        rank=20,
        method="reference" if method == "spf-reference" else "factored",
        gate="always" if method == "spf-factored-always" else "global",
    )
    return SPFFilter(model, tok, cfg)


def one_step(model, opt, spf, batch) -> float:
    start = time.perf_counter()
    out = model(input_ids=batch, labels=batch)
    out.loss.backward()
    if spf is not None:
        spf.apply_()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_setting(setting: str, steps: int, batch_size: int, seq: int) -> dict:
    model, tok, opt = build(setting)
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    filters = {m: make_filter(m, model, tok) for m in METHODS}
    times = {m: [] for m in METHODS}
    for i in range(steps + 1):
        batch = torch.randint(0, vocab, (batch_size, seq), generator=gen)
        for m in METHODS:
            t = one_step(model, opt, filters[m], batch)
            if i > 0:  # the first round is warm-up
                times[m].append(t)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        m: {"median_s": med[m], "ratio": med[m] / med["plain"], "samples": times[m]} for m in METHODS
    }


def count_flops(model, tok, batch: torch.Tensor, rank: int = 20) -> dict:
    """Matmul FLOPs of one plain forward + backward on ``batch`` (B, L) and of each part of an exact SPF step.

    Returns ``{"plain", "safety_pass", "bases", "gate_projection", "extra", "floor"}`` (FLOPs; ``floor`` =
    1 + extra / plain). The gate is forced on, so the projection is counted as on a step where it fires.
    """
    from spftune import SPFConfig
    from spftune.core.basis import fit_basis
    from spftune.core.capture import capture_gradients
    from spftune.core.filter import build_safety_batch
    from spftune.core.projection import project_gradients_
    from spftune.core.targets import select_parameters

    config = SPFConfig(rank=rank)
    params = select_parameters(model, config.targets)
    safety = build_safety_batch(tok, config)  # input_ids, attention_mask, labels: what SPFFilter captures on
    counted = {}

    def count(key: str, fn):
        with FlopCounterMode(display=False) as counter:
            out = fn()
        counted[key] = counter.get_total_flops()
        return out

    count("plain", lambda: model(input_ids=batch, labels=batch).loss.backward())
    grads, _ = count("safety_pass", lambda: capture_gradients(model, safety, params, factored=True))
    bases = count("bases", lambda: {n: fit_basis(g, rank) for n, g in grads.items()})
    with torch.no_grad():
        count("gate_projection", lambda: project_gradients_(
            {n: p.grad for n, p in params.items() if p.grad is not None}, bases, gate="always"))
    model.zero_grad(set_to_none=True)
    counted["extra"] = counted["safety_pass"] + counted["bases"] + counted["gate_projection"]
    counted["floor"] = 1 + counted["extra"] / counted["plain"]
    return counted


def flops_setting(setting: str, batch_size: int, seq: int) -> dict:
    model, tok, _ = build(setting)
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = torch.randint(0, vocab, (batch_size, seq), generator=torch.Generator().manual_seed(0))
    return count_flops(model, tok, batch)


def peak_memory_child(setting: str, method: str, batch_size: int, seq: int) -> None:
    model, tok, opt = build(setting)
    spf = make_filter(method, model, tok)
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = torch.randint(0, vocab, (batch_size, seq), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        one_step(model, opt, spf, batch)
    print(json.dumps({"maxrss_kib": peak_rss_kib()}))


def peak_rss_kib() -> int:
    # VmHWM: the peak RSS of this process image. (ru_maxrss is inherited across fork+exec on Linux, so a child
    # started by a large parent would report the parent's peak.)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory(setting: str, batch_size: int, seq: int) -> dict:
    out = {}
    for m in METHODS:
        cmd = [sys.executable, __file__, "--child", setting, m, "--batch", str(batch_size), "--seq", str(seq)]
        cmd += ["--threads", str(torch.get_num_threads())]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[m] = json.loads(res.stdout.strip().splitlines()[-1])["maxrss_kib"] / 1024
    return {m: {"peak_mib": v, "ratio": v / out["plain"], "extra_mib": v - out["plain"]} for m, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--settings", default="full,lora")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-flops", action="store_true", help="skip the arithmetic floor (one counted step per setting)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--child", nargs=2, metavar=("SETTING", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        peak_memory_child(*args.child, args.batch, args.seq)
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    results = {"device": device, "batch": args.batch, "seq": args.seq, "steps": args.steps, "settings": {}}
    for setting in args.settings.split(","):
        timing = None if args.no_timing else time_setting(setting, args.steps, args.batch, args.seq)
        memory = None if args.no_memory else peak_memory(setting, args.batch, args.seq)
        flops = None if args.no_flops else flops_setting(setting, args.batch, args.seq)
        results["settings"][setting] = {"time": timing, "memory": memory, "flops": flops}
    timed = "" if args.no_timing else f", median of {args.steps} steps"
    print(f"SmolLM2-135M-Instruct, batch {args.batch} x {args.seq} tokens, {device}{timed}\n")
    measured = [(s, r) for s, r in results["settings"].items() if r["time"] or r["memory"]]
    if measured:
        print("| setting | method | s / step | time vs plain | peak MiB | memory vs plain |")
        print("|---|---|---|---|---|---|")
    for setting, r in measured:
        for m in METHODS:
            t = r["time"][m] if r["time"] else None
            mem = r["memory"][m] if r["memory"] else None
            time_cells = f"{t['median_s']:.2f} | {t['ratio']:.3f}x" if t else "- | -"
            mem_cells = f"{mem['peak_mib']:.0f} | {mem['ratio']:.3f}x" if mem else "- | -"
            print(f"| {setting} | {m} | {time_cells} | {mem_cells} |")
    for setting, r in results["settings"].items():
        flops = r["flops"]
        if flops:
            share = {k: 100 * flops[k] / flops["plain"] for k in ("safety_pass", "bases", "gate_projection")}
            print(f"\n{setting}: plain step {flops['plain'] / 1e9:.0f} GFLOP (matmuls); exact SPF adds "
                  f"{share['safety_pass']:.1f}% (safety pass) + {share['bases']:.1f}% (bases, QR/eigh not counted) + "
                  f"{share['gate_projection']:.1f}% (gate + projection) -> arithmetic floor {flops['floor']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
