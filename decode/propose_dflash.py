"""The DFlash proposer: one drafter forward per step drafts a whole block (heads/dflash.py).

The drafter's KV cache (decode/kv.py, per-row lengths) holds *context* keys/values only: the fused target
features of committed positions as each draft layer projects them, computed once per position. Each step feeds
what the target committed last step (after prefill the prompt; then the accepted path, root included, with the
target's features at those tree nodes) together with the block ``[root, mask x (K-1)]`` in ONE forward; the
context entries are committed, the block's are dropped. Block position i predicts the token at ``root_pos + i``,
so one forward gives up to K-1 drafts, turned into a ``DraftTree`` for the shared verifier:

- ``topk=1`` (default), greedy: the chain of per-position argmaxes;
- ``topk=1``, sampling: a chain drawn position by position from each position's warped draft distribution, with
  ``q`` recorded. The positions are drawn independently given the context; that is still a valid proposal for
  the verifier's rejection sampling, because ``q[node]`` is exactly the distribution that node was drawn from
  (decode/verify.py);
- ``topk>1``: a tree from per-position top-k. The children of a depth d-1 node are the top-k tokens of position d
  (the same for every parent: positions are independent given the context); the ``total_tokens - 1`` best nodes
  by summed log-probability are kept (EAGLE-2's reranking, ``select_best_nodes``). Deterministic candidates, so
  the verifier treats each as a point mass, greedy or sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from selfspec.decode.kv import KVState
from selfspec.decode.propose import join_pending
from selfspec.decode.tree import DraftTree, chain_parents, select_best_nodes
from selfspec.decode.verify import Acceptance
from selfspec.sampling import sample
from selfspec.utils import SelfspecError

Warp = Callable[[torch.Tensor], torch.Tensor]  # logits (..., V) -> probs (..., V)
TREE_TOPK, TREE_TOTAL = 4, 16  # ``tree=True`` without sizes: EAGLE-2's 16-node trees


@dataclass
class _Context:
    """Committed positions not yet in the drafter's cache."""

    features: torch.Tensor  # (B, C, H) fused target features
    positions: torch.Tensor  # (B, C) long
    valid: torch.Tensor  # (B, C) bool
    n_host: list[int] | None = None  # valid entries per row, on the host when the decoder knows them


class DFlashProposer:
    """Drafts ``depth`` (<= block_size - 1) tokens per step from one DFlash forward: a chain or a top-k tree."""

    def __init__(self, drafter: torch.nn.Module, depth: int, topk: int = 1, total_tokens: int = 0) -> None:
        k = drafter.block_size
        if not 1 <= depth <= k - 1:
            raise SelfspecError(
                f"this dflash drafter drafts blocks of {k} ({k - 1} tokens per forward): depth={depth} does not "
                f"fit, use 1 <= depth <= {k - 1}"
            )
        self.drafter, self.depth, self.topk = drafter, depth, max(1, topk)
        self.total = max(2, total_tokens) if self.topk > 1 else depth + 1
        self.tree_size = self.total
        self.kv: KVState | None = None
        self.pending: _Context | None = None
        self.fed = False

    @classmethod
    def from_options(cls, drafter: torch.nn.Module, options: Mapping[str, Any]) -> DFlashProposer:
        """The decoder's options: ``depth`` (default block_size - 1), ``topk``/``tree``, ``total_tokens``."""
        depth = options.get("depth") or drafter.block_size - 1
        topk = 1 if options.get("tree") is False else options.get("topk") or 1
        if options.get("tree") is True and topk == 1:
            topk = TREE_TOPK
        total = options.get("total_tokens") or (TREE_TOTAL if topk > 1 else depth + 1)
        return cls(drafter, depth, topk, total)

    def feature_layers(self) -> list[int]:
        return self.drafter.feature_layers()

    # -- the three calls ---------------------------------------------------------------------------------

    def start(self, ids, valid, positions, feats: Sequence[torch.Tensor], first, max_len: int = 4096) -> None:
        """After prefill: the prompt's features are the first context. ``max_len``: the target's cache
        capacity; the drafter's holds as many context entries plus one step's pending ones."""
        layers = len(self.drafter.layers)
        step = 2 * self.drafter.block_size + 2  # one step's pending entries: the context, then the block
        self.kv = KVState.empty(ids.shape[0], ids.device, layers, max_len + step, reserve=step)
        self.pending = _Context(self.drafter.fuse(torch.cat(list(feats), -1)), positions, valid.bool())
        self.fed = False  # whether ``pending`` is in the drafter's cache (a plain step drafts nothing)

    def update(self, acc: Acceptance, tree: DraftTree, feats: Sequence[torch.Tensor], root_pos) -> None:
        """Next context: the accepted path (root first) at ``root_pos + j``, with the target's features there."""
        path = acc.path.clamp(min=0)  # (B, D+1) tree indices
        f = torch.cat(list(feats), -1)  # (B, N, F)
        f = f.gather(1, path[..., None].expand(-1, -1, f.shape[-1]))  # (B, D+1, F)
        j = torch.arange(path.shape[1], device=path.device)[None]  # (1, D+1)
        counts = None if acc.n_host is None else [n + 1 for n in acc.n_host]
        ctx = _Context(self.drafter.fuse(f), root_pos[:, None] + j, j <= acc.n_accepted[:, None], counts)
        self.pending = (
            ctx
            if self.fed
            else _Context(*join_pending(self.pending, ctx, ("features", "positions", "valid")))
        )
        self.fed = False

    def draft(self, root: torch.Tensor, root_pos: torch.Tensor, warp: Warp | None, gen) -> DraftTree:
        logits = self._block_logits(root, root_pos)  # (B, depth, Vd)
        if self.topk == 1:
            return self._chain(root, logits, warp, gen)
        return self._tree(root, logits, warp)

    # -- one forward: commit the context, read the block ---------------------------------------------------

    def _block_logits(self, root: torch.Tensor, root_pos: torch.Tensor) -> torch.Tensor:
        ctx, kv = self.pending, self.kv
        b, c = ctx.valid.shape
        k, dev = self.drafter.block_size, root.device
        block_pos = root_pos[:, None] + torch.arange(k, device=dev)  # (B, K)
        # Block queries see the committed cache, the new context entries that are valid, and the whole block.
        new = torch.cat(
            [ctx.valid[:, None, :].expand(b, k, c), torch.ones(b, k, k, dtype=torch.bool, device=dev)], -1
        )
        _, logits = self.drafter(
            ctx.features,
            ctx.positions,
            self.drafter.block_ids(root),
            block_pos,
            kv.mask(new, c + k),
            kv.cache,
        )  # (B, K, Vd)
        order = torch.arange(c, device=dev)
        keep = torch.where(ctx.valid, order, c + order).argsort(-1)  # valid context entries first, in order
        kv.commit(keep, ctx.valid.sum(-1), ctx.n_host)  # the block's pending entries are dropped
        self.fed = True
        return logits[:, 1 : 1 + self.depth]

    def _chain(self, root, logits, warp, gen) -> DraftTree:
        b, d = root.shape[0], self.depth
        q = None
        if warp is None:
            draft = logits.argmax(-1)  # (B, D)
        else:  # each position drawn from its own warped distribution, which is recorded as its proposal
            probs = warp(logits)  # (B, D, Vd)
            draft = sample(probs, gen)  # (B, D)
            q = self._q_to_target(probs)
            q = torch.cat([torch.zeros_like(q[:, :1]), q], 1)  # the root is not drafted
        tokens = torch.cat([root[:, None], self.drafter.draft_to_target(draft)], 1)  # (B, D+1)
        return DraftTree(tokens, chain_parents(d + 1, b, root.device), d, q)

    def _tree(self, root, logits, warp) -> DraftTree:
        probs = warp(logits) if warp is not None else logits.float().softmax(-1)  # (B, D, Vd)
        top = probs.topk(self.topk, dim=-1)  # (B, D, k)
        tok, parents = per_position_tree(top.indices, top.values.clamp(min=1e-30).log(), self.total - 1)
        tokens = torch.cat([root[:, None], self.drafter.draft_to_target(tok)], 1)
        parents = torch.cat([torch.full_like(root[:, None], -1), parents], 1)
        return DraftTree(tokens, parents, self.depth)

    def _q_to_target(self, q: torch.Tensor) -> torch.Tensor:
        """(B, D, Vd) draft-vocabulary probabilities -> (B, D, V), zero outside the draft vocabulary."""
        ids = self.drafter.draft_to_target(torch.arange(q.shape[-1], device=q.device))
        out = torch.zeros(*q.shape[:-1], self.drafter.t2d.numel(), dtype=q.dtype, device=q.device)
        return out.index_copy_(-1, ids, q)


def per_position_tree(
    top_ids: torch.Tensor, top_logp: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position top-k (B, D, k) ids and log-probs -> (tokens (B, keep), parents (B, keep)) of a tree.

    Level d expands the k best nodes of level d-1, each with the k tokens of position d; a node's score is the sum
    of its path's log-probabilities, forced to decrease strictly along a path so the best ``keep`` are closed under
    ancestors. Parents are tree indices (root 0, kept nodes 1..keep in order).
    """
    b, d, k = top_ids.shape
    dev = top_ids.device
    cand_tok, cand_score = [top_ids[:, 0]], [top_logp[:, 0]]
    cand_par = [torch.full((b, k), -1, dtype=torch.long, device=dev)]
    front, base = torch.arange(k, device=dev).expand(b, k), k  # (B, k) frontier as candidate indices
    for level in range(1, d):
        par_score = torch.cat(cand_score, 1).gather(1, front)  # (B, k)
        floor = torch.nextafter(par_score, torch.full_like(par_score, -float("inf")))
        score = torch.minimum(
            par_score[..., None] + top_logp[:, level, None, :], floor[..., None]
        )  # (B, k, k)
        cand_score.append(score.reshape(b, k * k))
        cand_tok.append(top_ids[:, level, None, :].expand(b, k, k).reshape(b, k * k))
        cand_par.append(front.repeat_interleave(k, dim=1))
        front = base + cand_score[-1].topk(k, dim=-1).indices
        base += k * k
    tok, score, par = torch.cat(cand_tok, 1), torch.cat(cand_score, 1), torch.cat(cand_par, 1)
    kept, parents = select_best_nodes(score, par, keep)
    return tok.gather(1, kept), parents
