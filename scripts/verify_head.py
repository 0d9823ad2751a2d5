"""Verification cost with the target's own lm_head (transformers) against ``own_head`` (``project``), interleaved.

``python scripts/verify_head.py [--dtype fp32] [--context 200] [--repeat 12]``: one target forward over n new
tokens after a ``--context``-token prefix (a copy of the prefix cache per call), for n = 1, 2, 3, 4, 8, 16, and
the prefill row: the whole prefix with ``logits_to_keep=1`` (what the decoder's prefill and ``generate`` ask
for); both paths alternating in one process; minimum milliseconds of ``--repeat`` calls each. The transformers
head is ``F.linear`` on the 3D hidden states; ``project`` flattens them to 2D and picks ``W @ x.T`` (fp32, few
rows) or ``F.linear``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from selfspec.heads.features import target_forward
from selfspec.target import load_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=12)
    args = ap.parse_args()
    target, _ = load_target(args.target, device="cpu", dtype=args.dtype)
    gen = torch.Generator().manual_seed(0)
    vocab = target.config.get_text_config().vocab_size
    prefix = torch.randint(0, vocab, (1, args.context), generator=gen)
    with torch.no_grad():
        cache = target(input_ids=prefix, use_cache=True).past_key_values
    print(f"target {args.target}, {args.dtype}, {torch.get_num_threads()} threads, context {args.context}")
    print("| new tokens | transformers head (ms) | project head (ms) | ratio |")
    print("|---:|---:|---:|---:|")

    def prefill(own: bool) -> float:
        return _ms(lambda: target_forward(target, prefix, logits_to_keep=1, own_head=own))

    print(_row(f"prefill {args.context}, last row", max(args.repeat // 3, 2), prefill))
    for n in (1, 2, 3, 4, 8, 16):
        ids = torch.randint(0, vocab, (1, n), generator=gen)
        pos = torch.arange(args.context, args.context + n)[None]

        def step(own: bool, ids=ids, pos=pos) -> float:
            kv = copy.deepcopy(cache)  # outside the timed call
            return _ms(lambda: target_forward(target, ids, None, pos, kv, own_head=own))

        print(_row(str(n), args.repeat, step))


def _ms(fn) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    return (time.perf_counter() - t0) * 1e3


def _row(label: str, repeat: int, timed) -> str:
    """A table row: the minimum of ``timed(own)`` (ms) per head, the two alternating ``repeat`` times."""
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeat):
        for own in (False, True):
            best[own] = min(best[own], timed(own))
    return f"| {label} | {best[False]:.1f} | {best[True]:.1f} | {best[False] / best[True]:.2f}x |"


if __name__ == "__main__":
    main()
