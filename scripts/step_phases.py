"""Where a speculative step's time goes: draft (feed + grow), verify, commit, emit, update, per step.

    python scripts/step_phases.py --drafter outputs/eagle3/drafter [--depth 2 --topk 4 --total-tokens 8]
        [--prompts 4] [--max-new-tokens 128] [--dtype fp32]

Decodes the drafter's held-out prompts with a fixed tree (every step drafts) and times each phase of the
decoder's loop by wrapping its calls; prints milliseconds per step. EAGLE, EAGLE-3 and draft models (the
cached proposer). Run it alone: the phases are wall times.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.decode import decoder as decoder_module
from selfspec.decode.bench.prompts import prompts_from_dataset_dir
from selfspec.decode.bench.setup import dataset_of_drafter
from selfspec.decode.kv import KVState
from selfspec.decode.propose import CachedProposer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", required=True)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--total-tokens", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    dec = SpeculativeDecoder.from_pretrained(
        args.drafter, dtype=args.dtype, depth=args.depth, topk=args.topk, total_tokens=args.total_tokens
    )
    spent: dict[str, float] = collections.defaultdict(float)

    def timed(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = inner(*a, **k)
            spent[label] += time.perf_counter() - t0
            return out

        setattr(owner, name, wrapper)

    timed(CachedProposer, "_feed_segment", "draft: feed the accepted entries")
    timed(CachedProposer, "_grow", "draft: grow the tree")
    timed(decoder_module._Run, "_verify", "verify (target forward + acceptance)")
    timed(decoder_module, "target_forward", "target forwards (verify and prefill)")
    timed(KVState, "commit", "commit accepted KV entries")
    timed(decoder_module._Run, "_emit", "emit (the step's host sync)")
    timed(CachedProposer, "update", "proposer update")
    prompts = prompts_from_dataset_dir(dataset_of_drafter(args.drafter), args.prompts)
    dec.generate(torch.tensor([prompts[0]]), max_new_tokens=16)  # warm-up
    spent.clear()
    steps, t0 = 0, time.perf_counter()
    for p in prompts:
        res = dec.generate(torch.tensor([p]), max_new_tokens=args.max_new_tokens)
        steps += res.stats.steps - 1
    wall = time.perf_counter() - t0
    print(f"{dec.tree_choice().describe()}; {steps} steps, {wall / steps * 1e3:.1f} ms a step\n")
    print("| phase | ms per step |\n|---|---:|")
    for label, s in spent.items():
        print(f"| {label} | {s / steps * 1e3:.2f} |")


if __name__ == "__main__":
    main()
