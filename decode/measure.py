"""Measuring a decoder's step costs through its own code path, and choosing its tree from them.

``choose_tree(decoder)`` is what ``SpeculativeDecoder.tree_choice()`` runs: the user's tree if the options
force one (with one warning when the cost model predicts it cannot pay), else the cost model's choice from the
cached (or freshly measured) ``CostCurve`` and the drafter's acceptance statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import torch

from selfspec.decode.cost import (
    CONTEXT,
    DEPTHS,
    VERIFY_SIZES,
    WIDTHS,
    CostCurve,
    cost_key,
    load_curve,
    save_curve,
    timeit,
)
from selfspec.decode.plan import TreeChoice, plan_tree, predict
from selfspec.decode.propose import CachedProposer, MedusaProposer, NullProposer, Segment
from selfspec.decode.propose_dflash import DFlashProposer
from selfspec.decode.tree import ancestor_mask, chain_parents
from selfspec.heads.features import target_forward

logger = logging.getLogger(__name__)


@functools.cache
def _say_once(message: str) -> None:
    logger.info("%s", message)


def acceptance_of(drafter: Any) -> list[list[float]] | None:
    """``p[d][r]`` recorded with the drafter (``acceptance.json``), if any."""
    stats = getattr(drafter, "acceptance", None)
    return stats.get("p") if isinstance(stats, dict) else None


def _sizes(drafter: Any, kind: str) -> dict[str, Any]:
    """The drafter's architecture (what its step cost depends on), without its weights."""
    if drafter is None:
        return {}
    cfg = getattr(drafter, "config", None)
    if dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
        d.pop("target_config", None)
        return d
    return {"kind": kind, "params": sum(p.numel() for p in drafter.parameters())}


def curve_for(dec: Any) -> CostCurve:
    key = cost_key(dec.target, dec.kind, _sizes(dec.drafter, dec.kind))
    curve = load_curve(key)
    if curve is None:
        logger.info("measuring this machine's decoding costs once (cached under %s)", "$SELFSPEC_HOME/costs")
        curve = measure_curve(dec, key)
        save_curve(curve)
    return curve


def choose_tree(dec: Any) -> TreeChoice:
    fixed = dec.fixed_choice()
    p = acceptance_of(dec.drafter)
    if fixed is not None:
        if p is not None:
            guess = predict(curve_for(dec), p, fixed)
            if guess.speedup < 1.0:
                logger.warning(
                    "the forced tree (depth %d, %d nodes) is predicted at %.2fx of plain decoding on this "
                    "machine; decoding with it as asked (tree=auto picks the fastest)",
                    fixed.depth, fixed.total_tokens, guess.speedup,
                )  # fmt: skip
            return guess
        return fixed
    if p is None:
        _say_once(f"{dec.kind} drafter without acceptance statistics: using the default tree")
        return dataclasses.replace(dec.fixed_choice(default=True), source="default: no acceptance statistics")
    curve = curve_for(dec)
    max_depth = {"medusa": lambda d: d.config.num_heads, "dflash": lambda d: d.block_size - 1}.get(
        dec.kind, lambda d: DEPTHS[-1]
    )(dec.drafter)
    choice = plan_tree(curve, p, max_depth=max_depth, p_chain=dec.drafter.acceptance.get("p_chain"))
    if choice.depth == 0:
        _say_once(f"no {dec.kind} tree beats plain decoding on this machine: decoding without speculation")
    return choice


# ---------------------------------------------------------------------------------------------------------
# Measurement.


@torch.no_grad()
def measure_curve(dec: Any, key: dict[str, Any]) -> CostCurve:
    """Verification forwards, draft steps and per-step overhead, timed through the decoder's own path."""
    from selfspec.decode.decoder import _Run

    dev = dec.target.get_output_embeddings().weight.device
    gen = torch.Generator().manual_seed(0)
    vocab = int(dec.target.get_output_embeddings().weight.shape[0])
    ids = torch.randint(0, vocab, (1, CONTEXT), generator=gen).to(dev)
    curve = CostCurve(key=key)
    run = _Run(dec, ids, max_new_tokens=64, eos_token_id=[], proposer=NullProposer())
    steps = run.steps()
    next(steps)  # the prefill
    # Two passes, the second in reverse, keeping each size's minimum: the first seconds of a burst after idle
    # run slower (seen on an AMX Xeon: 1-12 nodes at ~60 ms, then 16 nodes at 46, in one ascending pass).
    for n in [*VERIFY_SIZES, *reversed(VERIFY_SIZES)]:
        ms = timeit(lambda n=n: _verify_once(run, n))
        curve.verify_ms[n] = min(ms, curve.verify_ms.get(n, float("inf")))
    curve.draft_ms = _draft_costs(dec, ids)
    plain = timeit(lambda: next(steps), repeat=8)
    curve.overhead_ms = max(0.0, plain - curve.verify_ms[1])
    curve.spec_overhead_ms = _spec_overheads(dec, ids, curve)
    logger.info(
        "costs: verify 1/4/16 nodes %.1f/%.1f/%.1f ms, overhead %.1f ms, speculative step +%s ms",
        curve.verify_ms[1], curve.verify_ms[4], curve.verify_ms[16], curve.overhead_ms,
        "/".join(f"{v:.1f}" for v in curve.spec_overhead_ms.values()) or "0",
    )  # fmt: skip
    return curve


SPEC_SHAPES = ((3, 1, 4), (4, 4, 16))  # (depth, width, nodes): a chain and a tree


def _spec_overheads(dec: Any, ids: torch.Tensor, curve: CostCurve) -> dict[int, float]:
    """Per node count, a whole speculative step's median time minus verify + draft + overhead (>= 0).

    Whole steps of the decoder's own loop with a real proposer, on the measurement prompt; they include what
    the parts miss (the accept walk, the KV commit of accepted entries, the proposer's update, allocations)."""
    from selfspec.decode.decoder import _PlainDraft, _Run

    if dec.drafter is None or dec.kind in ("medusa", "dflash"):
        return {}  # one drafter call per step: draft_ms["*"] was timed as the proposer's whole step
    drafter = dec.drafter if hasattr(dec.drafter, "drafter_type") else _PlainDraft(dec.drafter)
    out = {}
    for depth, width, nodes in SPEC_SHAPES:
        proposer = CachedProposer(drafter, dec.kind, depth, width, nodes)
        run = _Run(dec, ids, max_new_tokens=128, eos_token_id=[], proposer=proposer)
        steps = run.steps()
        next(steps)  # the prefill
        step = timeit(lambda s=steps: next(s), repeat=9, warmup=2, stat="median")
        parts = curve.verify(nodes) + curve.draft(depth, width) + curve.overhead_ms
        out[nodes] = max(0.0, step - parts)
    return out


def _verify_once(run: Any, n: int) -> None:
    """One target forward over an n-node chain after the committed prompt, then dropped."""
    parents = chain_parents(n, 1, run.ids.device)
    anc = ancestor_mask(parents, n - 1)
    tokens = run.ids[:, -n:] if n <= run.ids.shape[1] else run.ids[:, :1].expand(1, n)
    pos = run.root_pos[:, None] + torch.arange(n, device=run.ids.device)
    target_forward(run.dec.target, tokens, run.kv.mask(anc), pos, run.kv.cache, run.layers, own_head=True)
    run.kv.rollback()


def _draft_costs(dec: Any, ids: torch.Tensor) -> dict[str, float]:
    """Draft-step milliseconds per (depth, width), or ``"*"`` for Medusa (every head in one call)."""
    from selfspec.decode.decoder import _PlainDraft, _Run

    if dec.drafter is None:
        return {"*": 0.0}
    if dec.kind in ("medusa", "dflash"):  # one drafter call per step, whatever the tree
        if dec.kind == "medusa":
            proposer = MedusaProposer(dec.drafter, [(0,)])
        else:
            proposer = DFlashProposer(dec.drafter, dec.drafter.block_size - 1, 4, 16)
        run = _Run(dec, ids, max_new_tokens=4, eos_token_id=[], proposer=proposer)
        next(run.steps())
        if dec.kind == "medusa":
            return {"*": timeit(lambda: proposer.draft(run.root, run.root_pos, None, None))}
        proposer.draft(run.root, run.root_pos, None, None)  # consume the prompt context
        ctx = proposer.pending
        proposer.pending = type(ctx)(ctx.features[:, -3:], ctx.positions[:, -3:], ctx.valid[:, -3:])
        saved = _snapshot(proposer.kv)
        return {"*": timeit(lambda: _draft_and_restore(proposer, run, saved))}
    drafter = dec.drafter if hasattr(dec.drafter, "drafter_type") else _PlainDraft(dec.drafter)
    out = {}
    for width in WIDTHS:
        for depth in DEPTHS:
            proposer = CachedProposer(drafter, dec.kind, depth, width, min(64, 1 + depth * width))
            run = _Run(dec, ids, max_new_tokens=4, eos_token_id=[], proposer=proposer)
            next(run.steps())  # prefill; the proposer starts with the prompt as its segment
            proposer.draft(run.root, run.root_pos, None, None)  # consume the prompt segment
            saved = _typical_segment(proposer, run)
            out[f"{depth},{width}"] = timeit(
                lambda p=proposer, r=run, s=saved: _draft_and_restore(p, r, s), repeat=4
            )
    # A smaller draft never costs more than a larger one: a minimum of 4 calls can still catch a slow moment
    # (seen: depth 3, width 8 at 21 ms between 10 and 9 ms), so each cost is capped by its deeper and wider ones.
    for width in reversed(WIDTHS):
        for depth in reversed(DEPTHS):
            for d, w in ((depth + 1, width), (depth, width * 2)):
                if f"{d},{w}" in out:
                    out[f"{depth},{width}"] = min(out[f"{depth},{width}"], out[f"{d},{w}"])
    return out


def _typical_segment(
    proposer: CachedProposer, run: Any, accepted: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """A segment of ``accepted + 1`` entries, as after a step that accepted ``accepted`` drafts."""
    a = accepted + 1
    dev = run.ids.device
    j = torch.arange(a, device=dev)[None]
    feats = None
    if proposer.seg is not None and proposer.seg.features is not None:
        feats = proposer.seg.features[:, -a:]
    proposer.seg = Segment(
        run.ids[:, -a:], run.root_pos[:, None] + j, torch.ones_like(j, dtype=torch.bool), feats
    )
    return _snapshot(proposer.kv)  # the drafter cache to return to


def _snapshot(kv: Any) -> tuple:
    return kv.length.clone(), kv.valid.clone(), list(kv.host_length)


def _draft_and_restore(proposer: Any, run: Any, saved: tuple) -> None:
    """One draft step (it feeds and commits the segment), then the drafter cache as it was."""
    proposer.draft(run.root, run.root_pos, None, None)
    length, valid, host = saved
    proposer.kv.length = length.clone()
    proposer.kv.valid.copy_(valid)
    proposer.kv.host_length = list(host)
