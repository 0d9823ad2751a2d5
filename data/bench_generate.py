"""Generated tokens/s of the target per engine, at batch 1 and the default batch: ``python data/bench_generate.py``.

Greedy answers to fixed chat prompts through each engine's ``generate`` (what the dataset builder calls):
``hf`` (selfspec's in-process continuous batching), ``vllm`` (offline ``vllm.LLM``, where importable) and, for
reference, ``transformers`` (plain padded ``model.generate``). At batch b the prompts go b at a time. Every
engine runs in the target's dtype (``--dtype``). Prints a table; a benchmark, not a test. Run it alone: two
cores are easily saturated.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time

import torch

from selfspec.data.config import DataConf
from selfspec.data.engine_hf import HFEngine
from selfspec.data.rollout import Sampling, generate_batch, pad_id, stop_token_ids
from selfspec.target import EMBEDDED_TARGET, load_target, resolve_target_path

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


class _Transformers:
    """Plain ``model.generate`` on a left-padded batch: every row runs until the longest one ends."""

    name = "transformers"

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tok, self.stops = model, tokenizer, stop_token_ids(model, tokenizer)

    def generate(self, prompts, max_new_tokens, *_, **__):
        return generate_batch(self.model, self.tok, prompts, Sampling(max_new_tokens), self.stops)


def bench(engine, prompts: list[list[int]], batch_size: int, max_new_tokens: int) -> tuple[float, int, float]:
    """Return (tokens/s, generated tokens, seconds) for ``prompts`` in batches of ``batch_size``."""
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        outs = engine.generate(prompts[i : i + batch_size], max_new_tokens)
        tokens += sum(len(o) for o, _ in outs)
    seconds = time.perf_counter() - start
    return tokens / seconds, tokens, seconds


def engines(names: list[str], model, tokenizer, target: str, batch_size: int):
    stops = stop_token_ids(model, tokenizer)
    for name in names:
        if name == "hf":
            yield name, lambda b: HFEngine(model, stops, pad_id(tokenizer), slots=b)
        elif name == "transformers":
            yield name, lambda b: _Transformers(model, tokenizer)
        elif name == "vllm":
            if importlib.util.find_spec("vllm") is None:
                logging.warning("vllm is not importable here: no vllm rows (see the README section vLLM)")
                continue
            from selfspec.data.config import VLLMEngineConf
            from selfspec.data.engine_vllm import VLLMEngine

            llm = VLLMEngine(
                resolve_target_path(target), model.dtype, stops, VLLMEngineConf(max_model_len=2048)
            )
            yield name, lambda b, llm=llm: llm
        else:
            raise SystemExit(f"unknown engine {name!r}: use hf, vllm, transformers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=EMBEDDED_TARGET)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--engines", default="transformers,hf,vllm")
    parser.add_argument("--batch-sizes", default=f"1,{DataConf.batch_size}")
    parser.add_argument("--num-prompts", type=int, default=64, help="prompts at the largest batch")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tokenizer = load_target(args.target, device=args.device, dtype=args.dtype)
    prompts = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for p in (PROMPTS * (1 + args.num_prompts // len(PROMPTS)))[: args.num_prompts]
    ]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for name, make in engines(args.engines.split(","), model, tokenizer, args.target, max(sizes)):
        bench(make(1), prompts[:1], 1, 4)  # warm-up
        for bs in sizes:
            n = max(bs, args.num_prompts) if bs > 1 else max(1, args.num_prompts // 16)
            rows.append((name, bs, *bench(make(bs), prompts[:n], bs, args.max_new_tokens)))
    print(
        f"target={args.target} dtype={str(model.dtype).removeprefix('torch.')} device={model.device} "
        f"threads={torch.get_num_threads()} max_new_tokens={args.max_new_tokens} greedy"
    )
    base = rows[0][2]
    print(f"| engine | batch | tokens | seconds | tok/s | vs {rows[0][0]} batch {rows[0][1]} |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, bs, tps, tokens, seconds in rows:
        print(f"| {name} | {bs} | {tokens} | {seconds:.1f} | {tps:.1f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
