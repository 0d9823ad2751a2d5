"""Verification: which drafted tokens the target accepts, and the bonus token it adds.

Greedy: walk down from the root; at node i the target's argmax ``t_i`` is the next token; if a child of i
carries ``t_i`` move there, else emit ``t_i`` as the bonus and stop. The output is the target's greedy output.

Sampling (speculative sampling, Leviathan et al. 2023 / Chen et al. 2023, and its multi-candidate form over
siblings, SpecInfer, Miao et al. 2023): at node i, with ``p`` the target's warped distribution there, try the
children c_1, c_2, ... in order. Child c_j with token x was proposed from ``q_j``: accept it with probability
``min(1, p(x) / q_j(x))``; on rejection ``p <- norm(max(p - q_j, 0))`` and try the next child; when all
children are rejected, the bonus is drawn from the final ``p``. Each attempt is one step of standard
speculative sampling against the *current* residual ``p``, whose output is distributed as that residual
whatever proposal is used, so the emitted token is distributed exactly as the target's ``p`` (induction over
siblings, then over depth). The proposal of each child must be exactly the distribution it was drawn from,
given everything tried before it. Two kinds of drafts satisfy that here:
- chains sampled from the draft (``DraftTree.q`` set): one child per node, drawn from ``q``;
- deterministic candidates (top-k children, static or EAGLE-2 dynamic trees; ``DraftTree.q is None``): a
  deterministic choice is a point mass, so c_j is accepted with probability ``p(x)`` and the residual is ``p``
  with ``x`` removed. Which candidates a tree holds may depend on the draft in any way, because it is fixed
  before the target's randomness is drawn. (Sampling siblings *with* replacement would need the duplicate
  bookkeeping of SpecInfer; we never do it.)
Warping (temperature, top-k, top-p) is applied identically to target and draft logits; ``p`` is the warped
target distribution, i.e. what ``target.generate(do_sample=True, ...)`` samples from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfspec.decode.tree import DraftTree, children_table
from selfspec.sampling import sample, warp_probs

__all__ = ["Acceptance", "greedy_accept", "sample_accept", "warp_probs"]


@dataclass
class Acceptance:
    path: torch.Tensor  # (B, D + 1) long tree indices of the accepted path; path[:, 0] = 0 (root), -1 padded
    n_accepted: torch.Tensor  # (B,) long accepted drafted tokens (the root is not counted)
    bonus: torch.Tensor  # (B,) long the target's own next token after the accepted path
    offered: (
        torch.Tensor
    )  # (B, D) bool: a draft at depth d+1 was offered (the walk reached a node with children)
    accepted: torch.Tensor  # (B, D) bool: a draft at depth d+1 was accepted
    n_host: list[int] | None = None  # n_accepted on the host, once the decoder has read it


def greedy_accept(tree: DraftTree, logits: torch.Tensor, width: int) -> Acceptance:
    """Longest path whose tokens equal the target's argmax; ``logits`` (B, N, V) at the tree nodes."""
    best = logits.argmax(-1)  # (B, N)
    b = best.shape[0]
    rows = torch.arange(b, device=best.device)
    kids_of = children_table(tree.parents, width)  # (B, N, W)
    cur = torch.zeros(b, dtype=torch.long, device=best.device)
    active = torch.ones(b, dtype=torch.bool, device=best.device)
    path = torch.full((b, tree.depth + 1), -1, dtype=torch.long, device=best.device)
    path[:, 0] = 0
    offered, accepted = [], []
    for d in range(tree.depth):
        kids = kids_of[rows, cur]  # (B, W)
        match = (kids >= 0) & (tree.tokens.gather(1, kids.clamp(min=0)) == best[rows, cur][:, None])
        hit = match.any(-1) & active
        nxt = kids.gather(1, match.long().argmax(-1, keepdim=True))[:, 0]  # first matching child
        offered.append(active & (kids[:, 0] >= 0))
        accepted.append(hit)
        cur = torch.where(hit, nxt, cur)
        active = hit
        path[:, d + 1] = torch.where(hit, nxt, -1)
    return Acceptance(path, (path[:, 1:] >= 0).sum(-1), best[rows, cur], *_stack(offered, accepted, b, best))


def sample_accept(tree: DraftTree, p: torch.Tensor, width: int, gen: torch.Generator | None) -> Acceptance:
    """Recursive rejection sampling over the tree (see the module docstring); ``p`` (B, N, V) target probs."""
    b, _, v = p.shape
    dev = p.device
    rows = torch.arange(b, device=dev)
    kids_of = children_table(tree.parents, width)  # (B, N, W)
    cur = torch.zeros(b, dtype=torch.long, device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    path = torch.full((b, tree.depth + 1), -1, dtype=torch.long, device=dev)
    path[:, 0] = 0
    residual = p[:, 0].clone()  # (B, V) what the bonus is drawn from if the walk stops here
    offered, accepted = [], []
    for d in range(tree.depth):
        moved = torch.zeros(b, dtype=torch.bool, device=dev)
        offered.append(active & (kids_of[rows, cur, 0] >= 0))
        for j in range(width):
            c = kids_of[rows, cur, j]  # (B,)
            has = (c >= 0) & active & ~moved
            c0 = c.clamp(min=0)
            x = tree.tokens[rows, c0]  # (B,)
            if tree.q is None:  # deterministic candidate: point-mass proposal
                qx = torch.ones(b, device=dev)
                q = torch.nn.functional.one_hot(x, v).to(p.dtype)
            else:
                q = tree.q[rows, c0].to(p.dtype)  # (B, V)
                qx = q[rows, x]
            u = torch.rand(b, device=dev, generator=gen)
            acc = has & (u * qx < residual[rows, x])  # u < p(x) / q(x)
            rej = has & ~acc
            res = (residual - q).clamp(min=0)
            mass = res.sum(-1, keepdim=True)
            res = torch.where(mass > 0, res / mass.clamp(min=1e-30), residual)
            residual = torch.where(rej[:, None], res, residual)
            cur = torch.where(acc, c, cur)
            moved |= acc
        accepted.append(moved)
        active = moved
        path[:, d + 1] = torch.where(moved, cur, -1)
        residual = torch.where(moved[:, None], p[rows, cur], residual)
    bonus = sample(residual, gen)
    return Acceptance(path, (path[:, 1:] >= 0).sum(-1), bonus, *_stack(offered, accepted, b, p))


def _stack(offered: list, accepted: list, b: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not offered:
        empty = torch.zeros(b, 0, dtype=torch.bool, device=like.device)
        return empty, empty
    return torch.stack(offered, 1), torch.stack(accepted, 1)
