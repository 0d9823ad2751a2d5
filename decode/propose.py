"""Proposers: turn a drafter into a draft tree per step, and keep its state in step with the target.

Every proposer has the same three calls: ``start`` after the target's prefill, ``draft`` before each
verification (returns a ``DraftTree`` rooted at the pending token) and ``update`` after it (with the accepted
path and the target's features at the tree nodes).

- ``MedusaProposer``: a static tree (Medusa choices) from all heads' top-k at one position, one matmul.
- ``CachedProposer``: EAGLE, EAGLE-3 and draft models, which run autoregressively over their own KV cache.
  Each step first feeds the *segment* (what the target committed last step), committing it to the drafter's
  cache, then grows an EAGLE-2 dynamic tree (Li et al. 2024, arXiv:2406.16858): expand the ``topk`` best
  nodes of each level by cumulative draft log-probability, ``depth`` levels, keep the best ``total_tokens``.
  ``topk=1`` is a chain (sampled from the draft when decoding with sampling, so rejection sampling applies).
  Tree entries never stay in the drafter's cache: the next segment re-feeds the accepted ones with the
  target's own features, as EAGLE does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from selfspec.decode.kv import KVState
from selfspec.decode.tree import DraftTree, select_best_nodes, static_tree
from selfspec.decode.verify import Acceptance
from selfspec.sampling import sample as draw

Warp = Callable[[torch.Tensor], torch.Tensor]  # logits (..., V) -> probs (..., V)


@dataclass
class Segment:
    """Entries to feed a cached drafter before drafting: one per position the target just committed."""

    tokens: torch.Tensor  # (B, A) long: token at t+1 (EAGLE) or at t (draft model)
    positions: torch.Tensor  # (B, A) long
    valid: torch.Tensor  # (B, A) bool
    features: torch.Tensor | None = None  # (B, A, F) target features at t (EAGLE) or None
    n_host: list[int] | None = None  # valid entries per row, on the host when the decoder knows them

    def then(self, later: Segment) -> Segment:
        """This segment followed by ``later`` (steps the drafter skipped: fed together at its next draft)."""
        return Segment(*join_pending(self, later, ("tokens", "positions", "valid", "features")))


def join_pending(a, b, names: Sequence[str]) -> list:
    """Fields ``names`` of two pending-entry records concatenated along the entries, then ``n_host`` summed."""
    out = [None if getattr(a, n) is None else torch.cat([getattr(a, n), getattr(b, n)], 1) for n in names]
    both = a.n_host is not None and b.n_host is not None
    return [*out, [x + y for x, y in zip(a.n_host, b.n_host, strict=True)] if both else None]


class NullProposer:
    """No speculation: the tree is the root alone, so each step is one plain target forward (the cost model
    picks this when no tree pays on this hardware)."""

    topk, depth, tree_size = 1, 0, 1

    def feature_layers(self) -> list[int]:
        return []

    def start(self, ids, valid, positions, feats, first, max_len: int = 0) -> None:
        pass

    def draft(self, root: torch.Tensor, root_pos: torch.Tensor, warp: Warp | None, gen) -> DraftTree:
        return DraftTree(root[:, None], torch.full_like(root[:, None], -1), 0)

    def update(self, acc: Acceptance, tree: DraftTree, feats, root_pos) -> None:
        pass


class MedusaProposer:
    """Static tree: node for path (i1..id) carries the i_d-th best token of head d-1 at the last position."""

    def __init__(self, medusa: torch.nn.Module, choices: Sequence[Sequence[int]]) -> None:
        self.medusa = medusa
        k = medusa.config.num_heads
        choices = [c for c in choices if len(c) <= k]
        self.parents, self.depths, self.picks, self.depth = static_tree(choices)
        self.topk = int(self.picks.max()) + 1
        self.width = int(torch.bincount(self.parents[1:]).max()) if len(self.parents) > 1 else 1
        self.last_hidden: torch.Tensor | None = None  # (B, H) target final state at the last committed node
        self.tree_size = len(self.parents)

    def feature_layers(self) -> list[int]:
        return self.medusa.feature_layers()

    def start(self, ids, valid, positions, feats, first, max_len: int = 0) -> None:
        self.last_hidden = feats[0][:, -1]

    def draft(self, root: torch.Tensor, root_pos: torch.Tensor, warp: Warp | None, gen) -> DraftTree:
        logits = self.medusa(self.last_hidden[:, None])[:, :, 0]  # (K, B, V), one matmul for all heads
        top = logits.topk(self.topk, dim=-1).indices  # (K, B, k)
        dev = root.device
        heads = (self.depths - 1).clamp(min=0).to(dev)  # (N,)
        toks = top[heads, :, self.picks.to(dev)].transpose(0, 1)  # (B, N)
        toks = torch.cat([root[:, None], toks[:, 1:]], dim=1)
        parents = self.parents.to(dev).expand_as(toks).contiguous()
        return DraftTree(toks, parents, self.depth)

    def update(self, acc: Acceptance, tree: DraftTree, feats, root_pos) -> None:
        last = acc.path.gather(1, acc.n_accepted[:, None])  # (B, 1) tree index of the last accepted node
        h = feats[0]  # (B, N, H)
        self.last_hidden = h.gather(1, last[..., None].expand(-1, 1, h.shape[-1]))[:, 0]


class CachedProposer:
    """EAGLE / EAGLE-3 / draft model over a per-row KV cache, drafting EAGLE-2 dynamic trees (or chains)."""

    def __init__(self, drafter: torch.nn.Module, kind: str, depth: int, topk: int, total_tokens: int) -> None:
        self.drafter, self.kind = drafter, kind
        self.depth, self.topk = depth, topk
        self.total = total_tokens if topk > 1 else depth + 1
        self.tree_size = self.total
        self.kv: KVState | None = None
        self.seg: Segment | None = None
        self.fed = False  # whether ``seg`` is in the drafter's cache (a plain step drafts nothing)
        self.offset = 1 if kind == "draft_model" else 0  # a draft model's entry sits at its token's position

    def feature_layers(self) -> list[int]:
        return [] if self.kind == "draft_model" else self.drafter.feature_layers()

    # -- the drafter's forward, one signature for every family -------------------------------------------

    def _forward(self, tokens, hidden, positions, mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        cache = self.kv.cache
        if self.kind == "draft_model":
            return self.drafter(
                tokens, attention_mask=mask, position_ids=positions, past_key_values=cache
            ), None
        out, logits = self.drafter(hidden, tokens, positions, attention_mask=mask, past_key_values=cache)
        return logits, out

    def _features(self, feats: Sequence[torch.Tensor]) -> torch.Tensor | None:
        if self.kind == "draft_model":
            return None
        if self.kind == "eagle3":
            return self.drafter.fuse(torch.cat(list(feats), dim=-1))  # (B, T, 3H) -> (B, T, H)
        return feats[0]

    def _to_target(self, ids: torch.Tensor) -> torch.Tensor:
        to_target = getattr(self.drafter, "draft_to_target", None)  # EAGLE / EAGLE-3 reduced vocabularies
        return ids if to_target is None else to_target(ids)

    # -- the three calls ---------------------------------------------------------------------------------

    def start(self, ids, valid, positions, feats, first, max_len: int = 4096) -> None:
        """``max_len``: the target's cache capacity; the drafter's holds as many committed entries plus the
        pending ones of one step (a segment, then the fed tree levels)."""
        b = ids.shape[0]
        layers = _num_layers(self.drafter) if self.kind == "draft_model" else 1
        step = self.depth * (self.topk + 1) + 2  # one step's pending entries: a segment, the fed levels
        self.kv = KVState.empty(b, ids.device, layers, max_len + step, reserve=step)
        self.fed = False
        ones = torch.ones(b, 1, dtype=torch.bool, device=ids.device)
        if self.kind == "draft_model":  # the whole prompt plus the first token, at their own positions
            toks = torch.cat([ids, first[:, None]], 1)
            pos = torch.cat([positions, positions[:, -1:] + 1], 1)
            self.seg = Segment(toks, pos, torch.cat([valid, ones], 1))
        else:  # (feature[t], token[t+1]) for every prompt position
            toks = torch.cat([ids[:, 1:], first[:, None]], 1)
            self.seg = Segment(toks, positions, valid, torch.cat(list(feats), -1))

    def update(self, acc: Acceptance, tree: DraftTree, feats, root_pos) -> None:
        """Next segment: the accepted path's next tokens (drafts after the root, then the bonus)."""
        path = acc.path.clamp(min=0)  # (B, D+1)
        j = torch.arange(path.shape[1], device=path.device)[None]  # (1, D+1)
        nxt = tree.tokens.gather(1, torch.cat([path[:, 1:], path[:, :1]], 1))  # token after each path node
        n = acc.n_accepted[:, None]
        nxt = torch.where(j == n, acc.bonus[:, None], nxt)
        feat = None
        if self.kind != "draft_model":
            f = torch.cat(list(feats), -1)  # (B, N, F)
            feat = f.gather(1, path[..., None].expand(-1, -1, f.shape[-1]))  # (B, D+1, F)
        counts = None if acc.n_host is None else [k + 1 for k in acc.n_host]
        seg = Segment(nxt, root_pos[:, None] + j + self.offset, j <= n, feat, counts)
        self.seg = seg if self.fed else self.seg.then(seg)
        self.fed = False

    def draft(self, root: torch.Tensor, root_pos: torch.Tensor, warp: Warp | None, gen) -> DraftTree:
        logits, hidden = self._feed_segment()  # (B, V'), (B, H) at the root's entry
        tree = self._grow(root, root_pos, logits, hidden, warp, gen)
        self.kv.rollback()  # tree entries never stay
        return tree

    def _feed_segment(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        seg, kv = self.seg, self.kv
        b, a = seg.tokens.shape
        dev = seg.tokens.device
        causal = torch.ones(a, a, dtype=torch.bool, device=dev).tril()
        new = (causal & seg.valid[:, None, :]) | torch.eye(a, dtype=torch.bool, device=dev)  # pads see self
        hidden = self._features([seg.features]) if seg.features is not None else None
        logits, out = self._forward(seg.tokens, hidden, seg.positions, kv.mask(new))
        order = torch.arange(a, device=dev)
        keep = torch.where(seg.valid, order, a + order).argsort(-1)  # valid entries first, in order
        kv.commit(keep, seg.valid.sum(-1), seg.n_host)
        self.fed = True
        last = (seg.valid.long() * (order + 1)).argmax(-1)  # (B,) the last valid entry = the root's
        rows = torch.arange(b, device=dev)
        return logits[rows, last], (out[rows, last] if out is not None else None)

    def _grow(self, root, root_pos, logits, hidden, warp, gen) -> DraftTree:
        """EAGLE-2: expand the ``topk`` best nodes per level; keep the best ``total`` - 1 candidates."""
        b, k, dev = root.shape[0], self.topk, root.device
        sample_chain = warp is not None and k == 1
        probs = warp(logits) if warp is not None else logits.float().softmax(-1)  # (B, V')
        tok, score, q = _children(probs[:, None], torch.zeros(b, 1, device=dev), k, sample_chain, gen)
        cand_tok, cand_score, cand_q = [tok], [score], [q]
        cand_par = [torch.full((b, k), -1, dtype=torch.long, device=dev)]
        front = torch.arange(k, device=dev).expand(b, k)  # (B, k) frontier as candidate indices
        front_h = None if hidden is None else hidden[:, None].expand(b, k, -1)  # (B, k, H) input features
        fed_parent = torch.full(
            (b, k), -1, dtype=torch.long, device=dev
        )  # frontier's parent entry (-1: root)
        anc = torch.zeros(b, 0, 0, dtype=torch.bool, device=dev)  # (B, F, F) ancestry of fed tree entries
        eye = torch.eye(k, dtype=torch.bool, device=dev).expand(b, k, k)
        for d in range(2, self.depth + 1):
            f = anc.shape[1]
            up = (
                anc.gather(1, fed_parent.clamp(min=0)[..., None].expand(-1, -1, f))
                & (fed_parent >= 0)[..., None]
            )
            rows = torch.cat([up, eye], -1)  # (B, k, F+k): ancestors (self included) among fed entries
            anc = torch.cat([torch.nn.functional.pad(anc, (0, k)), rows], 1)  # (B, F+k, F+k)
            mask = self.kv.mask(rows)  # the fed tree entries are the pending ones, in order
            toks = self._to_target(torch.cat(cand_tok, 1).gather(1, front))  # (B, k)
            pos = (root_pos + d - 2 + self.offset)[:, None].expand(b, k)  # fed nodes sit at depth d-1
            lg, out = self._forward(toks, front_h, pos, mask)  # (B, k, V'), (B, k, H)
            probs = warp(lg) if warp is not None else lg.float().softmax(-1)
            par_score = torch.cat(cand_score, 1).gather(1, front)  # (B, k)
            tok, score, q = _children(probs, par_score, k, sample_chain, gen)  # (B, k*k) or (B, 1)
            base = sum(t.shape[1] for t in cand_tok)
            per = tok.shape[1] // k  # children per frontier node
            cand_tok.append(tok)
            cand_score.append(score)
            cand_par.append(front.repeat_interleave(per, dim=1))
            cand_q.append(q)
            best = score.topk(k, -1).indices  # (B, k) next frontier, within this level
            fed_parent = f + best // per
            front = base + best
            if out is not None:
                front_h = out.gather(1, (best // per)[..., None].expand(-1, -1, out.shape[-1]))
        return self._assemble(root, cand_tok, cand_score, cand_par, cand_q)

    def _assemble(self, root, cand_tok, cand_score, cand_par, cand_q) -> DraftTree:
        tok, score, par = torch.cat(cand_tok, 1), torch.cat(cand_score, 1), torch.cat(cand_par, 1).long()
        kept, parents = select_best_nodes(score, par, self.total - 1)
        tokens = torch.cat([root[:, None], self._to_target(tok.gather(1, kept))], 1)
        parents = torch.cat([torch.full_like(root[:, None], -1), parents], 1)
        q = None
        if cand_q[0] is not None:  # sampled chain: each node's proposal, on the target vocabulary
            qd = torch.cat(cand_q, 1).gather(1, kept[..., None].expand(-1, -1, cand_q[0].shape[-1]))
            q = self._q_to_target(qd)
            q = torch.cat([torch.zeros_like(q[:, :1]), q], 1)  # the root is not drafted
        return DraftTree(tokens, parents, self.depth, q)

    def _q_to_target(self, q: torch.Tensor) -> torch.Tensor:
        if getattr(self.drafter, "t2d", None) is None:
            return q
        v = self.drafter.t2d.numel()
        ids = self._to_target(torch.arange(q.shape[-1], device=q.device))
        return torch.zeros(*q.shape[:-1], v, dtype=q.dtype, device=q.device).index_copy_(-1, ids, q)


def _num_layers(model: torch.nn.Module) -> int:
    """Decoder layers of a draft model (a selfspec DraftModel or a plain transformers causal LM)."""
    inner = getattr(model, "model", model)
    return int(inner.config.get_text_config().num_hidden_layers)


def _children(probs, parent_score, k, sample, gen):
    """Children of each of P parents: (B, P, V') probs -> tokens, scores (B, P*k), and q if sampled.

    Scores are cumulative log-probabilities, forced to decrease strictly along a path so the best-``total``
    selection is closed under ancestors.
    """
    b, p, v = probs.shape
    if sample:  # chain: draw from the draft, remember the proposal
        tok = draw(probs, gen)  # (B, P)
        lp = probs.gather(-1, tok[..., None])[..., 0].clamp(min=1e-30).log()
        q = probs
    else:
        top = probs.topk(k, dim=-1)  # (B, P, k)
        tok, lp, q = top.indices.reshape(b, p * k), top.values.clamp(min=1e-30).log().reshape(b, p * k), None
    par = parent_score.repeat_interleave(k if not sample else 1, dim=1)
    score = torch.minimum(par + lp, torch.nextafter(par, torch.full_like(par, -float("inf"))))
    return tok, score, q
