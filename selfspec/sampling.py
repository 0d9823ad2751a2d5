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
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # mass before a token already exceeds top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits.softmax(-1)


def pick(logits: torch.Tensor, temperature: float, top_p: float = 1.0, gen: torch.Generator | None = None):
    """(..., V) logits -> (...) token ids: argmax at temperature 0, else a draw from the warped distribution."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = warp_probs(logits, temperature, top_p=top_p)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=gen).view(probs.shape[:-1])
