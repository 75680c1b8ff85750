"""Benchmark: batched generation vs one prompt at a time, 64 prompts, default model, CPU.

    .venv/bin/python bench/generation_speed.py [--prompts 64] [--max-new-tokens 64] [--batch-size 32] [--threads N]

Both runs use :func:`spftune.eval.generate` (same chat formatting, greedy decoding, same stopping rule); the only
difference is the batch size (1 vs ``--batch-size``, left padding, length-sorted batches). Prints both times, the
speed-up, how many outputs are identical between the two runs, and a markdown row for BENCHMARKS.md.
The acceptance target of the evaluation issue is a speed-up of at least 5x.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from spftune.eval import generate
from spftune.models import load_model_and_tokenizer

_TOPICS = [
    "the water cycle", "photosynthesis", "a good night's sleep", "the history of the bicycle", "how vaccines work",
    "learning a new language", "the moon's phases", "composting at home", "the rules of chess", "saving money",
    "volcanoes", "how a refrigerator works", "writing a cover letter", "the French Revolution", "honeybees",
    "making bread",
]
_TEMPLATES = [
    "Explain {t} in one short paragraph.",
    "Give me three facts about {t}.",
    "Write a short, friendly note to a child about {t}, using simple words and an example from everyday life.",
    "What is the most common misconception about {t}? Answer briefly.",
]


def benchmark_prompts(n: int) -> list[str]:
    prompts = [tpl.format(t=topic) for tpl in _TEMPLATES for topic in _TOPICS]
    return (prompts * (n // len(prompts) + 1))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model id or path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model_and_tokenizer(args.model)
    prompts = benchmark_prompts(args.prompts)
    generate(model, tokenizer, prompts[:2], max_new_tokens=4)  # warm-up

    start = time.perf_counter()
    batched = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    single = [generate(model, tokenizer, [p], max_new_tokens=args.max_new_tokens)[0] for p in prompts]
    t_single = time.perf_counter() - start

    same = sum(a == b for a, b in zip(batched, single, strict=True))
    ratio = t_single / t_batched
    name = args.model or "SmolLM2-135M-Instruct (default)"
    threads = torch.get_num_threads()
    print(f"model: {name}; {args.prompts} prompts; max_new_tokens={args.max_new_tokens}; torch threads={threads}; "
          f"CPU: {platform.processor() or platform.machine()}")
    print(f"one at a time: {t_single:.1f} s ({t_single / len(prompts):.2f} s/prompt)")
    print(f"batched (batch_size={args.batch_size}): {t_batched:.1f} s ({t_batched / len(prompts):.2f} s/prompt)")
    print(f"speed-up: {ratio:.1f}x; identical outputs: {same}/{len(prompts)}")
    print()
    print("| benchmark | setting | one at a time (s) | batched (s) | speed-up | identical outputs |")
    print("|---|---|---|---|---|---|")
    print(f"| generation_speed | {name}, CPU fp32, {threads} thread(s), {args.prompts} prompts, greedy, "
          f"max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size} | {t_single:.1f} | {t_batched:.1f} | "
          f"{ratio:.1f}x | {same}/{len(prompts)} |")


if __name__ == "__main__":
    main()
