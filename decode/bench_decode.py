"""Minimal speed check: tokens/s and mean accepted tokens per drafter vs ``target.generate`` greedy.

    python decode/bench_decode.py outputs/eagle/export outputs/medusa/export --new 64
    python decode/bench_decode.py --untrained eagle medusa --target tiny-random   # wiring check only

The polished report with baselines and plots is decode/bench.py; this prints one table and nothing else.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.heads import build_drafter, load_drafter
from selfspec.target import EMBEDDED_TARGET, load_target
from selfspec.utils import setup_logging

logger = logging.getLogger("selfspec.decode.bench_decode")
PROMPTS = ["Explain why the sky is blue.", "Write a short poem about the sea.", "List three uses of Python."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drafters", nargs="*", help="exported drafter folders")
    ap.add_argument("--untrained", nargs="*", default=[], help="drafter types to build untrained")
    ap.add_argument("--target", default=EMBEDDED_TARGET)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    setup_logging()
    target, tok = load_target(args.target, device="auto")
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)["input_ids"] for p in PROMPTS]  # fmt: skip
    prompts = [p.to(target.device) for p in prompts]
    rows = [("target.generate", *_time_hf(target, prompts, args.new), float("nan"))]
    drafters = [(p, load_drafter(p, target, tokenizer=tok)) for p in args.drafters]
    drafters += [(f"untrained {t}", build_drafter({"type": t}, target)) for t in args.untrained]
    for name, drafter in drafters:
        dec = SpeculativeDecoder(target, drafter)
        tokens, secs, acc = 0, 0.0, []
        for ids in prompts:
            res = dec.generate(ids, max_new_tokens=args.new)
            tokens, secs = tokens + res.stats.new_tokens, secs + res.stats.wall_time_s
            acc.append(res.stats.mean_accepted_tokens)
        rows.append((name, tokens, secs, sum(acc) / len(acc)))
    print(f"{'method':40s} {'tokens':>7s} {'tok/s':>8s} {'accepted/fwd':>13s}")
    for name, tokens, secs, acc in rows:
        print(f"{name[-40:]:40s} {tokens:7d} {tokens / secs:8.1f} {acc:13.2f}")


@torch.no_grad()
def _time_hf(target, prompts, new: int) -> tuple[int, float]:
    tokens, secs = 0, 0.0
    for ids in prompts:
        t0 = time.perf_counter()
        out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new)
        secs += time.perf_counter() - t0
        tokens += out.shape[1] - ids.shape[1]
    return tokens, secs


if __name__ == "__main__":
    main()
