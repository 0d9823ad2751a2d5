"""Token sampling shared by data generation and speculative decoding: one warping rule for both."""

from __future__ import annotations

import torch


def warp_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits (..., V) -> probabilities after temperature, top-k, top-p (the order HF's warpers use)."""
    logits = logits.float() / max(temperature, 1e-5)
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        logits = _top_p(logits, top_p)
    return logits.softmax(-1)


def _top_p(logits: torch.Tensor, top_p: float, head: int = 256) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose mass reaches ``top_p`` (HF's rule), exactly.

    Sorting a whole 50k-token vocabulary per row is most of a sampling step on a CPU; the nucleus almost always
    lies within the ``head`` most probable tokens, so those are sorted first (``topk``) and the full sort is
    only the fallback for rows whose head holds less than ``top_p`` of the mass.
    """
    v = logits.shape[-1]
    k = min(head, v)
    top, order = logits.topk(k, dim=-1)  # (..., k) sorted, descending
    probs = top.softmax(-1) * (top.logsumexp(-1, keepdim=True) - logits.logsumexp(-1, keepdim=True)).exp()
    if k < v and bool((probs.sum(-1) < top_p).any()):  # some nucleus reaches past the head: sort everything
        top, order = logits.sort(dim=-1, descending=True)
        probs = top.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p  # mass before a token already exceeds top_p
    drop[..., 0] = False
    keep = torch.full_like(logits, float("-inf")).scatter(-1, order, torch.where(drop, float("-inf"), 0.0))
    return logits + keep


def pick(logits: torch.Tensor, temperature: float, top_p: float = 1.0, gen: torch.Generator | None = None):
    """(..., V) logits -> (...) token ids: argmax at temperature 0, else a draw from the warped distribution."""
    if temperature <= 0:
        return logits.argmax(-1)
    return sample(warp_probs(logits, temperature, top_p=top_p), gen)


def sample(probs: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """(..., V) probabilities (need not be normalised) -> (...) one draw per row.

    The exponential race: argmax of p / E with E ~ Exp(1) i.i.d. is distributed as p. One pass over the
    vocabulary, where ``torch.multinomial`` builds cumulative sums (several times slower on a CPU).
    """
    race = torch.empty_like(probs, dtype=torch.float32).exponential_(1.0, generator=gen)
    return (probs / race).argmax(-1)
