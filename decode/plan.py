"""Trees sized from measured costs (``tree: auto``): the tree that maximises expected new tokens per second.

The drafter's acceptance statistics give ``p[d][r]``: the probability that the target's token at draft depth
``d`` is the drafter's rank-``r`` candidate there, given that the path above it was accepted (recorded at
training time by teacher-forced unrolling on the eval split, ``acceptance.json`` in the drafter folder). Under
the usual independence assumption (Sequoia, Chen et al. 2024, arXiv:2402.12374) a node reached by ranks
``(r1..rd)`` is accepted with probability ``prod p[i][r_i]``, and the best tree of N nodes is the N most
probable rank paths, found best-first (a child is never more probable than its parent, so the set is a tree).
Its expected tokens per step are 1 (the bonus) plus the sum of its nodes' probabilities. The cost of a step is
``verify(N) + draft(depth, width) + overhead + spec_overhead(N)`` (``decode/cost.py``); the planner scans depth, width and size and
keeps the fastest, or no speculation at all when nothing beats plain decoding. EAGLE-2's dynamic trees choose
nodes by draft confidence per step, which does at least as well as this static estimate.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from selfspec.decode.cost import DEPTHS, CostCurve

MAX_NODES = 64
SIZES = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)


@dataclass
class TreeChoice:
    """A planned tree: ``depth`` 0 means no speculation. ``paths`` are rank paths (Medusa's choices format)."""

    depth: int
    topk: int
    total_tokens: int
    paths: list[tuple[int, ...]] = field(default_factory=list)
    tokens_per_step: float = 1.0
    ms_per_step: float = 0.0
    speedup: float = 1.0  # predicted, against plain decoding through the same loop
    source: str = "cost model"

    def describe(self) -> str:
        if self.depth == 0:
            return f"no speculation ({self.source})"
        shape = "chain" if self.topk == 1 else f"tree top-{self.topk}"
        return (
            f"{shape}, depth {self.depth}, {self.total_tokens} nodes ({self.source}): predicted "
            f"{self.tokens_per_step:.2f} tokens/step, {self.ms_per_step:.1f} ms/step, {self.speedup:.2f}x"
        )


def best_paths(
    p: list[list[float]], n: int, max_depth: int, width: int
) -> list[tuple[tuple[int, ...], float]]:
    """The ``n`` most probable rank paths (depth <= max_depth, ranks < width), parents before children."""
    depth_cap = min(max_depth, len(p))
    heap = [(-p[0][r], (r,)) for r in range(min(width, len(p[0]))) if p[0][r] > 0] if depth_cap else []
    heapq.heapify(heap)
    out: list[tuple[tuple[int, ...], float]] = []
    while heap and len(out) < n:
        neg, path = heapq.heappop(heap)
        out.append((path, -neg))
        d = len(path)
        if d < depth_cap:
            for r in range(min(width, len(p[d]))):
                if p[d][r] > 0:
                    heapq.heappush(heap, (neg * p[d][r], (*path, r)))
    return sorted(out, key=lambda pp: (len(pp[0]), pp[0]))


def expected_tokens(paths: list[tuple[tuple[int, ...], float]]) -> float:
    return 1.0 + sum(prob for _, prob in paths)


def plan_tree(
    curve: CostCurve,
    p: list[list[float]],
    max_depth: int = DEPTHS[-1],
    widths: tuple[int, ...] = (1, 2, 3, 4, 6, 8),
    p_chain: list[float] | None = None,
) -> TreeChoice:
    """The (depth, width, size) with the most expected tokens per ms; depth 0 if plain decoding is faster.

    ``p_chain[d]``: acceptance at depth d+1 given every token above was the drafter's first choice (what a
    chain sees); chains use it instead of ``p[d][0]`` (which conditions on the weaker "within the tree")."""
    plain = curve.plain_ms()
    best = TreeChoice(0, 1, 1, ms_per_step=plain)
    best_rate = 1.0 / plain
    for width in widths:
        for depth in range(1, min(max_depth, len(p)) + 1):
            draft = curve.draft(depth, width)
            for size in SIZES:
                if size - 1 < depth or (width == 1 and size - 1 > depth):
                    continue
                paths = best_paths(p, size - 1, depth, width)
                if not paths or max(len(q) for q, _ in paths) < depth:
                    continue  # this depth is not reached by the best nodes: a smaller depth covers it
                tokens = expected_tokens(paths)
                if width == 1 and p_chain and len(p_chain) >= depth:
                    tokens = 1.0 + sum(math.prod(p_chain[: d + 1]) for d in range(depth))
                ms = curve.verify(size) + draft + curve.overhead_ms + curve.spec_overhead(size)
                if tokens / ms > best_rate * (1 + 1e-9):
                    best_rate = tokens / ms
                    best = TreeChoice(
                        depth, width, size, [q for q, _ in paths], tokens, ms, plain * tokens / ms
                    )
    return best


def path_probability(p: list[list[float]], path: tuple[int, ...]) -> float:
    prob = 1.0
    for d, r in enumerate(path):
        prob *= p[d][r] if d < len(p) and r < len(p[d]) else 0.0
    return prob


def predict(curve: CostCurve, p: list[list[float]], choice: TreeChoice) -> TreeChoice:
    """The model's figures for a tree forced by the user (its paths, or the best ones of its shape)."""
    if choice.paths:
        paths = [(q, path_probability(p, q)) for q in choice.paths]
    else:
        paths = best_paths(p, max(choice.total_tokens - 1, 0), choice.depth, max(choice.topk, 1))
    tokens = expected_tokens(paths)
    n = choice.total_tokens
    ms = curve.verify(n) + curve.draft(choice.depth, max(choice.topk, 1)) + curve.overhead_ms
    ms += curve.spec_overhead(n)
    return TreeChoice(choice.depth, choice.topk, choice.total_tokens, [q for q, _ in paths], tokens, ms,
                      curve.plain_ms() * tokens / ms, "fixed")  # fmt: skip
