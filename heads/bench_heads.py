"""Draft-step cost of each drafter family on the embedded target's sizes: ``python -m selfspec.heads.bench_heads``.

One draft step = what decode/ runs per drafted token (batch 1, one new position, a warm cache of ``--ctx``
tokens where the family has one). Medusa drafts all K tokens in one step, so its per-token cost is step/K; so does
DFlash, whose step is one forward over one new context entry and a block of K positions (K-1 drafts).
Reference rows: one target forward of 1 token, and the target's lm_head alone.

A second table is the other side of the trade: one target forward over n new tokens (a verification of an
n-node tree) against a 1-token forward. A decoder that verifies n nodes per step beats the target alone only when
it accepts more tokens per step than that ratio (plus its draft steps), which is why tree sizes are per hardware.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from selfspec.heads import build_drafter
from selfspec.target import EMBEDDED_TARGET, load_target
from selfspec.utils import dtype_name, resolve_dtype


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    """Minimum wall time of ``fn`` in ms: on a shared CPU the minimum is the least disturbed estimate."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def _cached_step(drafter, hidden: torch.Tensor, ctx: int) -> Callable[[], object]:
    """A step of EAGLE/EAGLE-3 at position ``ctx`` over a warm cache (cropped back after each call)."""
    cache = DynamicCache()
    ids = torch.zeros(1, ctx, dtype=torch.long)
    drafter(hidden.expand(1, ctx, -1), ids, torch.arange(ctx)[None], past_key_values=cache)
    pos = torch.tensor([[ctx]])

    def step():
        out = drafter(hidden, ids[:, :1], pos, past_key_values=cache)
        cache.crop(-1)  # drop the step just written (transformers 5: negative = remove)
        return out

    return step


def _dflash_step(drafter, ctx: int) -> Callable[[], object]:
    """A DFlash step at position ``ctx``: one new context entry and the block, over a warm context cache."""
    h, k = drafter.config.hidden_size, drafter.block_size
    aux = torch.randn(1, ctx + 1, len(drafter.feature_layers()) * h, dtype=next(drafter.parameters()).dtype)
    cache = DynamicCache()
    context = drafter.fuse(aux)  # (1, ctx+1, H)
    block = drafter.block_ids(torch.zeros(1, dtype=torch.long))  # (1, K)
    drafter(context[:, :ctx], torch.arange(ctx)[None], block, torch.arange(ctx, ctx + k)[None], None, cache)
    cache.crop(-k)  # keep the context (transformers 5: negative = remove)
    new_pos, block_pos = torch.tensor([[ctx]]), torch.arange(ctx + 1, ctx + 1 + k)[None]

    def step():
        out = drafter(drafter.fuse(aux[:, ctx:]), new_pos, block, block_pos, None, cache)
        cache.crop(-(1 + k))
        return out

    return step


def rows(target, ctx: int, repeat: int, vocab_sizes: list[int]) -> list[tuple[str, float, int]]:
    """(name, ms per step, tokens drafted per step)."""
    h = target.config.hidden_size
    hidden = torch.randn(1, 1, h, dtype=target.dtype)
    out: list[tuple[str, float, int]] = []
    ids = torch.zeros(1, 1, dtype=torch.long)
    cache = DynamicCache()
    target(torch.zeros(1, ctx, dtype=torch.long), past_key_values=cache, use_cache=True)

    def target_step():
        target(ids, past_key_values=cache, use_cache=True, position_ids=torch.tensor([[ctx]]))
        cache.crop(-1)  # drop the step just written (transformers 5: negative = remove)

    out.append(("target forward (1 token, reference)", timeit(target_step, repeat), 1))
    out.append(("target lm_head alone (reference)", timeit(lambda: target.lm_head(hidden), repeat), 1))

    for own in (False, True):
        m = build_drafter({"type": "medusa", "num_heads": 4, "own_lm_head": own}, target)
        name = "own lm_heads" if own else "target lm_head"
        out.append((f"medusa K=4, {name}, batched", timeit(lambda m=m: m(hidden), repeat), 4))

        def loop(m=m, own=own):  # the naive layout: one output matmul per head
            z = m.head_states(hidden)
            return [(z[k] @ m.lm_head[k].t()) if own else m.target_lm_head(z[k]) for k in range(4)]

        out.append((f"medusa K=4, {name}, per-head loop", timeit(loop, repeat), 4))
        if not own:  # the same single matmul through F.linear (x @ W.T): slower for few rows on CPU

            def linear(m=m):
                z = m.head_states(hidden)
                return torch.nn.functional.linear(z.reshape(4, -1), m.target_lm_head.weight)

            out.append((f"medusa K=4, {name}, batched F.linear", timeit(linear, repeat), 4))

    e = build_drafter({"type": "eagle"}, target)
    out.append(("eagle (1 layer + target lm_head)", timeit(_cached_step(e, hidden, ctx), repeat), 1))
    for vd in vocab_sizes:
        e3 = build_drafter({"type": "eagle3", "draft_vocab_size": vd}, target)
        label = "full" if vd <= 0 or vd >= target.config.vocab_size else f"{vd // 1024}k"
        out.append(
            (
                f"eagle3 draft vocab {label} ({e3.draft_vocab_size})",
                timeit(_cached_step(e3, hidden, ctx), repeat),
                1,
            )
        )

    for layers, vd in ((3, 8192), (1, 8192), (3, 0)):
        d = build_drafter(
            {"type": "dflash", "block_size": 8, "num_layers": layers, "draft_vocab_size": vd}, target
        )
        label = "full" if vd <= 0 else f"{vd // 1024}k"
        out.append(
            (
                f"dflash K=8 ({layers} layers, vocab {label}), per block",
                timeit(_dflash_step(d, ctx), repeat),
                7,
            )
        )

    dm = build_drafter({"type": "draft_model", "num_layers": 4}, target)
    dcache = DynamicCache()
    dm(torch.zeros(1, ctx, dtype=torch.long), past_key_values=dcache)

    def dm_step():
        dm(ids, position_ids=torch.tensor([[ctx]]), past_key_values=dcache)
        dcache.crop(-1)  # drop the step just written (transformers 5: negative = remove)

    out.append(("draft_model 4 layers", timeit(dm_step, repeat), 1))
    return out


def verify_rows(target, ctx: int, repeat: int, sizes: list[int]) -> list[tuple[int, float]]:
    """(n, ms) of one target forward over n new tokens after ``ctx`` cached ones (the cache cropped back)."""
    cache = DynamicCache()
    target(torch.zeros(1, ctx, dtype=torch.long), past_key_values=cache, use_cache=True)
    out = []
    for n in sizes:
        ids = torch.zeros(1, n, dtype=torch.long)
        pos = torch.arange(ctx, ctx + n)[None]

        def forward(ids=ids, pos=pos, n=n):
            target(ids, past_key_values=cache, use_cache=True, position_ids=pos)
            cache.crop(-n)  # drop the tokens just written (transformers 5: negative = remove)

        out.append((n, timeit(forward, repeat)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=EMBEDDED_TARGET)
    p.add_argument("--ctx", type=int, default=128, help="tokens already in the cache")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--vocab", type=int, nargs="*", default=[0, 32768, 16384, 8192])
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64], help="verified nodes")
    p.add_argument("--dtypes", nargs="*", default=["fp32", "auto"], help="one column per dtype (auto: bf16 on "
                   "a CPU with native bf16): whether drafters should run in the target's dtype")  # fmt: skip
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(dict.fromkeys(dtype_name(resolve_dtype(d, "cpu")) for d in args.dtypes))
    tables, verifies = [], []
    for name in names:
        target, _ = load_target(args.target, device="cpu", dtype=name)
        with torch.inference_mode():
            tables.append(rows(target, args.ctx, args.repeat, args.vocab))
            verifies.append(verify_rows(target, args.ctx, args.repeat, args.sizes))
    c = target.config
    print(
        f"\ntarget {args.target}: H={c.hidden_size} V={c.vocab_size} L={c.num_hidden_layers}, ctx={args.ctx}, "
        f"batch 1, CPU, {torch.get_num_threads()} threads, min of {args.repeat}; ms per draft step by dtype"
    )
    print(f"{'drafter / step':<46}" + "".join(f" {n + ' ms':>10} {'/token':>8} {'x fwd':>6}" for n in names))
    for i, (label, _, k) in enumerate(tables[0]):
        cells = []
        for t in tables:
            ms, ref = t[i][1], t[0][1]
            cells.append(f" {ms:10.2f} {ms / k:8.2f} {ms / k / ref:6.2f}")
        print(f"{label:<46}" + "".join(cells))
    print(
        f"\n{'verified nodes (one target forward)':<46}"
        + "".join(f" {n + ' ms':>10} {'x 1':>8}" for n in names)
    )
    for i, (n, _) in enumerate(verifies[0]):
        print(f"{n:<46}" + "".join(f" {v[i][1]:10.2f} {v[i][1] / v[0][1]:8.2f}" for v in verifies))


if __name__ == "__main__":
    main()
