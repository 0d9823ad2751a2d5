"""Losslessness, stated per dtype: identical outputs in fp32, near-ties only in bf16.

In bf16 a forward over a block of tokens rounds differently from the same tokens fed one at a time, so a
speculative decoder (which verifies blocks) can pick the other token where the target's top two logits are
almost equal, and ``generate`` (one token at a time) cannot be matched exactly. ``block_noise`` measures how
far the two roundings drift apart on this machine; a divergence from the reference is a *near-tie* when the
reference's own top-2 logit margin at the first differing token is below that noise. In fp32 the noise is
~1e-5 and every output must be identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass
class Noise:
    max_abs: float  # largest |logit(block) - logit(single)| over the measured positions
    positions: int
    argmax_flips: int


@torch.no_grad()
def block_noise(
    target: PreTrainedModel, sequences: list[list[int]], prompt_lens: list[int], block: int = 8
) -> Noise:
    """Logits of each sequence's continuation computed in ``block``-token forwards vs one token at a time."""
    worst, positions, flips = 0.0, 0, 0
    dev = target.device
    for seq, p in zip(sequences, prompt_lens, strict=True):
        ids = torch.tensor([seq], device=dev)
        n = (len(seq) - p) // block * block
        if n == 0:
            continue
        per_mode = []
        for step in (block, 1):
            cache = DynamicCache()
            target(ids[:, :p], past_key_values=cache, use_cache=True)
            chunks = [target(ids[:, s : s + step], past_key_values=cache, use_cache=True).logits[0]
                      for s in range(p, p + n, step)]  # fmt: skip
            per_mode.append(torch.cat(chunks).float())  # (n, V)
        a, b = per_mode
        worst = max(worst, float((a - b).abs().max()))
        flips += int((a.argmax(-1) != b.argmax(-1)).sum())
        positions += n
    return Noise(worst, positions, flips)


@torch.no_grad()
def reference_margins(target: PreTrainedModel, prompt: list[int], new: list[int], pad_id: int) -> list[float]:
    """The reference's top-2 logit margin at each of its greedy steps (``generate``'s own, one at a time)."""
    ids = torch.tensor([prompt], device=target.device)
    out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(new), do_sample=False,
                          pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True)  # fmt: skip
    return [top2_margin(logits[0]) for logits in out.logits]


def top2_margin(logits: torch.Tensor) -> float:
    """The gap between the two largest logits of one position (V,)."""
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


def near_tie(margin: float | None, noise: Noise) -> bool:
    """A divergence at a position whose reference top-2 margin is within the block-vs-single noise."""
    return margin is not None and margin <= noise.max_abs


def first_divergence(got: list[int], ref: list[int]) -> int | None:
    """Index of the first differing token (a length difference counts at the shorter end), or None."""
    for i, (a, b) in enumerate(zip(got, ref, strict=False)):
        if a != b:
            return i
    return None if len(got) == len(ref) else min(len(got), len(ref))
