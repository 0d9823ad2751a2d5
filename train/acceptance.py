"""Acceptance statistics of a trained drafter: what the tree planner (``decode/plan.py``) needs.

For every eval position t (the target has just emitted x_{t+1}, the pending root of a draft tree) and every
draft depth d, the drafter predicts x_{t+1+d} teacher-forced on the true prefix, as it does while decoding along
an accepted path: Medusa head d-1 at t; EAGLE / EAGLE-3 unrolled d steps on their own hidden states (the
training-time-test layout of ``train/losses.py``); a draft model's logits at t+d. The rank of the target's own
token among the drafter's candidates gives ``p[d][r]``: the probability that it is the rank-r candidate, given
that the tokens above it were within the ranks a tree can hold. Written to ``acceptance.json`` in the drafter
folder at export.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from transformers import DynamicCache

from selfspec.heads.vocab import draft_token_ids
from selfspec.train.losses import _shift_ids, ttt_mask

DEPTH = 8  # draft depths measured
RANKS = 8  # candidate ranks per depth (a tree wider than this is never planned)


def _medusa(drafter, ids, tgt_logits, features, depth) -> Iterator[torch.Tensor]:
    logits = drafter(features[0])  # (K, B, T, V): head k at t predicts x_{t+k+2}
    for k in range(min(depth, logits.shape[0])):
        yield logits[k]


def _unrolled(drafter, ids, tgt_logits, features, depth) -> Iterator[torch.Tensor]:
    """EAGLE / EAGLE-3: step j at row t reads its step j-1 hidden and x_{t+j+1} at position t+j."""
    b, seq = ids.shape
    r = seq - 1
    if drafter.drafter_type == "eagle3":
        hidden = drafter.fuse(torch.cat(features, dim=-1)[:, :r])
    else:
        hidden = features[0][:, :r]
    cache = DynamicCache()
    pos = torch.arange(r, device=ids.device).expand(b, r)
    for j in range(depth):
        hidden, logits = drafter(
            hidden, _shift_ids(ids, 1 + j, r), pos + j, ttt_mask(r, j, b, ids.device), cache
        )
        yield logits


def _draft_model(drafter, ids, tgt_logits, features, depth) -> Iterator[torch.Tensor]:
    logits = drafter(ids)  # (B, T, V): position s predicts x_{s+1}; depth d at root t is position t+d
    for d in range(1, depth + 1):
        yield logits[:, d:]


def _dflash(drafter, ids, tgt_logits, features, depth) -> Iterator[torch.Tensor]:
    """Root t's block is anchored at t+1 (the root token); block position d+1 predicts x_{t+d+2}."""
    b, seq = ids.shape
    context = drafter.fuse(torch.cat(features, dim=-1))  # (B, T, H)
    out: list[list[torch.Tensor]] = [[] for _ in range(min(depth, drafter.block_size - 1))]
    for chunk in torch.arange(1, seq, device=ids.device).split(64):  # anchors, a few blocks at a time
        logits = drafter.forward_anchors(context, ids, chunk[None].expand(b, -1))  # (B, n, K, Vd)
        for d, per_depth in enumerate(out):
            per_depth.append(logits[:, :, d + 1])
    for per_depth in out:
        yield torch.cat(per_depth, 1)  # (B, T-1, Vd)


PREDICTIONS = {
    "medusa": _medusa,
    "eagle": _unrolled,
    "eagle3": _unrolled,
    "draft_model": _draft_model,
    "dflash": _dflash,
}


@torch.no_grad()
def rank_counts(
    drafter: Any, ids: torch.Tensor, loss_mask: torch.Tensor, tgt_logits: torch.Tensor, features: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits (D, R + 2), reached (D,)) of one batch: hits[d, r] counts positions whose target token at depth
    d+1 was the drafter's rank-r candidate with every token above it within rank < R; reached[d] those
    positions; hits[d, R] and hits[d, R + 1] the same for a chain (every token above was the first choice)."""
    b, seq = ids.shape
    best = tgt_logits.argmax(-1)  # (B, T): the target's token after each position
    to_draft = None
    draft_ids = draft_token_ids(drafter)
    if draft_ids is not None:  # a reduced draft vocabulary: target id -> draft id, -1 outside it
        to_draft = torch.full((drafter.t2d.numel(),), -1, dtype=torch.long, device=ids.device)
        to_draft[draft_ids.to(ids.device)] = torch.arange(draft_ids.numel(), device=ids.device)
    hits = torch.zeros(DEPTH, RANKS + 2, dtype=torch.long)  # ranks 0..R-1, then the chain's hits and reach
    reached = torch.zeros(DEPTH, dtype=torch.long)
    alive = torch.ones(b, seq, dtype=torch.bool, device=ids.device)  # root t: all tokens above within ranks
    chain = alive.clone()  # root t: every token above was the drafter's first choice
    for d, logits in enumerate(PREDICTIONS[drafter.drafter_type](drafter, ids, tgt_logits, features, DEPTH)):
        n = min(logits.shape[1], seq - d - 2)  # roots t whose depth-(d+1) token x_{t+d+2} exists
        if n <= 0:
            break
        want = best[:, d + 1 : d + 1 + n]  # the target's token at depth d+1 of root t
        lg = logits[:, :n].float()
        idx = want if to_draft is None else to_draft[want]
        own = lg.gather(-1, idx.clamp(min=0)[..., None])[..., 0]
        rank = (lg > own[..., None]).sum(-1)  # (B, n)
        rank = torch.where(idx < 0, RANKS, rank)  # outside the draft vocabulary: never drafted
        ok = alive[:, :n] & loss_mask[:, d + 2 : d + 2 + n].bool()
        reached[d] += int(ok.sum())
        for r in range(RANKS):
            hits[d, r] += int((ok & (rank == r)).sum())
        on_chain = ok & chain[:, :n]
        hits[d, RANKS] += int((on_chain & (rank == 0)).sum())
        hits[d, RANKS + 1] += int(on_chain.sum())
        alive[:, :n] &= ok & (rank < RANKS)  # deeper nodes hang below a node a tree can hold
        chain[:, :n] &= ok & (rank == 0)
        alive[:, n:] = False
        chain[:, n:] = False
    return hits, reached


def to_probabilities(hits: torch.Tensor, reached: torch.Tensor) -> dict[str, Any]:
    """``p[d][r]`` (rounded), the chain's ``p_chain[d]`` and the counts behind them; ``tau_chain[d]``: the
    expected tokens per step of a chain of depth d+1 (bonus included). Depths never reached are dropped."""
    keep = int((reached > 0).sum())
    p = (hits[:keep, :RANKS].double() / reached[:keep, None].clamp(min=1)).tolist()
    chain = (hits[:keep, RANKS].double() / hits[:keep, RANKS + 1].clamp(min=1)).tolist()
    tau, run = [], 1.0
    for i, c in enumerate(chain):
        run *= c
        tau.append(round((tau[i - 1] if i else 1.0) + run, 4))
    return {
        "p": [[round(x, 5) for x in row] for row in p],
        "p_chain": [round(x, 5) for x in chain],
        "tau_chain": tau,
        "positions": reached[:keep].tolist(),
        "source": "eval split, teacher-forced",
    }
