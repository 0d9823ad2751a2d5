"""Draft trees: the one structure every drafter proposes and the one verifier checks.

A draft tree holds, per batch row, ``N`` nodes in topological order (a parent always has a smaller index than
its children). Node 0 is the *root*: the last token already decided (the previous step's bonus token), which
the target has not processed yet. Nodes ``1..N-1`` are drafted tokens; ``parents[b, i]`` is the index of
node ``i``'s parent (``-1`` for the root). A chain is the tree whose node ``i`` has parent ``i - 1``.

Verification runs all ``N`` nodes through the target in one forward: node ``i`` attends to the committed cache
and to its own ancestors (itself included) and sits at position ``root_pos + depth(i)`` (SpecInfer, Miao et
al. 2023; Medusa, Cai et al. 2024). Static trees (Medusa) come from a list of paths of top-k choice indices;
dynamic trees (EAGLE-2, Li et al. 2024, arXiv:2406.16858) are built in ``decode/propose.py`` with
``select_best_nodes`` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Medusa-style choices: each path lists top-k choice indices per depth (Medusa's `mc_sim_7b_63` format).
# A compact tree for CPU decoding (16 nodes with the root): wide near the root, deeper along the top choice.
COMPACT_CHOICES: list[tuple[int, ...]] = [
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
    (0, 0, 0, 0),
]  # fmt: skip

# A larger tree for 4 heads on a GPU (40 nodes with the root).
DEFAULT_CHOICES: list[tuple[int, ...]] = [
    (0,), (1,), (2,), (3,), (4,), (5,), (6,), (7,),
    (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0), (4, 0), (5, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (2, 0, 0), (0, 2, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0), (0, 0, 0, 2), (2, 0, 0, 0),
    (0, 0, 2, 0), (0, 3, 0), (3, 0, 0),
]  # fmt: skip


@dataclass
class DraftTree:
    """Proposed tokens for one verification step.

    ``q`` is what makes sampling lossless: ``q[b, i]`` is the (warped) draft distribution node ``i`` was
    *sampled* from. ``q is None`` means the children were chosen deterministically (top-k), i.e. each
    proposal is a point mass; see ``decode/verify.py``.
    """

    tokens: torch.Tensor  # (B, N) long; node 0 = root
    parents: torch.Tensor  # (B, N) long; parents[:, 0] = -1, parents[:, i] < i
    depth: int  # maximal node depth (the root has depth 0)
    q: torch.Tensor | None = None  # (B, N, V) float or None

    @property
    def size(self) -> int:
        return self.tokens.shape[1]


def chain_parents(n: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Parents of a chain of ``n`` nodes: (B, N) with ``[-1, 0, 1, ..., n-2]``."""
    return (torch.arange(n, device=device) - 1).expand(batch, n).contiguous()


def ancestor_mask(parents: torch.Tensor, depth: int) -> torch.Tensor:
    """(B, N) parents -> (B, N, N) bool, ``[b, i, j]`` True iff node j is node i or one of its ancestors.

    Follows parent pointers ``depth`` times (static loop, no host sync).
    """
    b, n = parents.shape
    anc = torch.eye(n, dtype=torch.bool, device=parents.device).expand(b, n, n).clone()  # (B, N, N) self
    ptr = parents.clone()  # (B, N): current ancestor of each node, -1 once past the root
    for _ in range(depth):
        ok = ptr >= 0
        anc |= torch.nn.functional.one_hot(ptr.clamp(min=0), n).bool() & ok[..., None]
        ptr = torch.where(ok, parents.gather(1, ptr.clamp(min=0)), ptr)
    return anc


def node_depths(parents: torch.Tensor, depth: int) -> torch.Tensor:
    """(B, N) parents -> (B, N) long depth of each node (root 0)."""
    return ancestor_mask(parents, depth).sum(-1) - 1


def tree_position_ids(parents: torch.Tensor, depth: int, root_pos: torch.Tensor) -> torch.Tensor:
    """(B, N) position ids of the tree nodes: ``root_pos[b] + depth(i)``."""
    return root_pos[:, None] + node_depths(parents, depth)


def verification_mask(key_valid: torch.Tensor, anc: torch.Tensor) -> torch.Tensor:
    """4D bool mask (B, 1, N, S + N) over ``[committed cache | tree]``; True = attend.

    ``key_valid`` (B, S) marks the committed cache slots of each row (left padding and holes are False);
    ``anc`` (B, N, N) is the tree's ancestor mask.
    """
    b, n, _ = anc.shape
    cached = key_valid[:, None, :].expand(b, n, key_valid.shape[1])  # (B, N, S)
    return torch.cat([cached, anc], dim=-1)[:, None]  # (B, 1, N, S+N)


def children_table(parents: torch.Tensor, width: int) -> torch.Tensor:
    """(B, N) parents -> (B, N, width) long child indices of each node in index order, -1 padded.

    ``width`` must be at least the largest number of children of any node.
    """
    b, n = parents.shape
    dev = parents.device
    same = parents[:, :, None] == parents[:, None, :]  # (B, N, N) siblings
    earlier = torch.ones(n, n, dtype=torch.bool, device=dev).tril(-1)  # j < i
    rank = (same & earlier).sum(-1)  # (B, N) position among its siblings
    slot = torch.where(parents >= 0, parents, n)  # the root's parent -1 goes to a dummy row n
    flat = torch.where(rank < width, slot * width + rank, (n + 1) * width)  # overflow -> a dummy column
    table = torch.full((b, (n + 1) * width + 1), -1, dtype=torch.long, device=dev)
    table.scatter_(1, flat, torch.arange(n, device=dev).expand(b, n).contiguous())
    table = table[:, :-1].view(b, n + 1, width)
    return table[:, :n]


def static_tree(choices: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Medusa choices -> (parents (N,), node depth (N,), choice index (N,), max depth), root included.

    Node for path ``(i1, ..., id)`` carries the ``i_d``-th top token of head ``d - 1``. Paths are sorted
    by (length, path) so parents precede children; every prefix of a path must itself be a path.
    """
    paths = sorted({tuple(c) for c in choices}, key=lambda p: (len(p), p))
    index = {(): 0}
    for i, p in enumerate(paths, start=1):
        index[p] = i
    parents, depths, picks = [-1], [0], [0]
    for p in paths:
        if p[:-1] not in index:
            raise ValueError(f"tree choice {list(p)} has no parent path {list(p[:-1])} in the choices")
        parents.append(index[p[:-1]])
        depths.append(len(p))
        picks.append(p[-1])
    max_depth = max(depths)
    return torch.tensor(parents), torch.tensor(depths), torch.tensor(picks), max_depth


def select_best_nodes(
    scores: torch.Tensor, parents: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE-2 reranking: keep the ``keep`` candidates with the best cumulative log-probability.

    ``scores`` (B, C) of candidates in topological order, ``parents`` (B, C) their parent candidate (-1 =
    root). Scores must strictly decrease along every path (the builder ensures it), so the kept set is closed
    under ancestors. Returns (kept candidate indices (B, keep) in ascending order, their parents as *tree*
    indices (B, keep), root = 0, kept nodes = 1..keep).
    """
    keep = min(keep, scores.shape[1])
    top = scores.topk(keep, dim=-1).indices.sort(dim=-1).values  # (B, keep) topological order
    b, c = scores.shape
    to_tree = torch.zeros(b, c + 1, dtype=torch.long, device=scores.device)  # candidate -> tree idx, root 0
    to_tree.scatter_(1, top + 1, torch.arange(1, keep + 1, device=scores.device).expand(b, keep))
    par = parents.gather(1, top)  # (B, keep) parent candidates
    return top, to_tree.gather(1, par + 1)
