"""Generated tokens/s of the target at batch 1 vs the default batch: ``python data/bench_generate.py``.

Greedy answers to fixed prompts through the same batched path the dataset builder uses (left padding, KV
cache). Prints a table; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from selfspec.data.config import DataConf
from selfspec.data.rollout import Sampling, generate_batch, stop_token_ids
from selfspec.target import EMBEDDED_TARGET, load_target

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis simply.",
    "Give me three tips for learning Python.",
    "Why is the sky blue?",
    "What is a prime number?",
    "Suggest a name for a grey cat.",
    "How do I boil an egg?",
    "What does a CPU do?",
    "Describe a rainbow.",
    "What is gravity?",
    "List two fruits rich in vitamin C.",
    "How far is the Moon?",
    "Translate 'hello' to Spanish.",
    "What is 12 times 7?",
    "Who wrote Hamlet?",
]


def bench(
    model, tokenizer, batch_size: int, num_prompts: int, max_new_tokens: int
) -> tuple[float, int, float]:
    """Return (tokens/s, generated tokens, seconds) for ``num_prompts`` prompts in batches of ``batch_size``."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for p in (PROMPTS * 4)[:num_prompts]
    ]
    stops, sampling = stop_token_ids(model, tokenizer), Sampling(max_new_tokens)
    tokens, start = 0, time.perf_counter()
    for i in range(0, num_prompts, batch_size):
        outs = generate_batch(
            model, tokenizer, [list(p) for p in prompts[i : i + batch_size]], sampling, stops
        )
        tokens += sum(len(o) for o, _ in outs)
    seconds = time.perf_counter() - start
    return tokens / seconds, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=EMBEDDED_TARGET)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default=f"1,{DataConf.batch_size}")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tokenizer = load_target(args.target, device=args.device)
    bench(model, tokenizer, 1, 1, 4)  # warm-up
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        n = max(args.num_prompts, bs) if bs > 1 else max(1, args.num_prompts // 4)
        rows.append((bs, *bench(model, tokenizer, bs, n, args.max_new_tokens)))
    base = rows[0][1]
    print(
        f"target={args.target} device={model.device} threads={torch.get_num_threads()} "
        f"max_new_tokens={args.max_new_tokens} greedy"
    )
    print(f"{'batch':>5} | {'tokens':>6} | {'seconds':>7} | {'tok/s':>7} | {'speed-up':>8}")
    print("-" * 46)
    for bs, tps, tokens, seconds in rows:
        print(f"{bs:>5} | {tokens:>6} | {seconds:>7.1f} | {tps:>7.1f} | {tps / base:>7.2f}x")


if __name__ == "__main__":
    main()
