"""Sampling is lossless: chi-square of speculative samples against the target's exact distribution.

A tiny Llama with an 8-token vocabulary is the target and another random one the draft model (or a random DFlash
drafter); 3000 batch rows with the same prompt are 3000 independent draws. The first new token comes from the
prefill, so the test looks at the joint law of new tokens 2 and 3 (64 cells), which speculative verification
produced.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from selfspec.decode import SpeculativeDecoder
from selfspec.decode.tree import DraftTree
from selfspec.decode.verify import greedy_accept, warp_probs
from selfspec.heads import build_drafter

V = 8
DRAWS = 3000
TEMPERATURE = 0.9


def _tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.5, eos_token_id=None, pad_token_id=None, bos_token_id=None)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _exact_joint(target, prompt: torch.Tensor) -> torch.Tensor:
    """P(x2, x3 | prompt) under the warped target, summing over x1: (V, V)."""
    seqs = torch.cartesian_prod(*[torch.arange(V)] * 3)  # (V^3, 3)
    ids = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        probs = warp_probs(target(ids).logits[:, prompt.shape[1] - 1 : -1], TEMPERATURE)  # (V^3, 3, V)
    p = probs.gather(-1, seqs[..., None])[..., 0].prod(-1)  # (V^3,)
    return p.view(V, V, V).sum(0)


def _chi2_threshold(df: int, z: float = 3.29) -> float:
    """Wilson-Hilferty upper quantile (z = 3.29: p ~ 0.0005)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _assert_follows_target(dec: SpeculativeDecoder, target: LlamaForCausalLM, seed: int | None = 123) -> None:
    """``seed=None``: draws from torch's global generator (seeded here), the mode the adaptive gate runs in."""
    prompt = torch.tensor([[1, 5, 2, 7]])
    torch.manual_seed(123)
    res = dec.generate(prompt.expand(DRAWS, -1), max_new_tokens=3, temperature=TEMPERATURE, seed=seed)
    new = res.sequences[:, -3:]
    counts = torch.bincount(new[:, 1] * V + new[:, 2], minlength=V * V).double()
    expected = _exact_joint(target, prompt).reshape(-1).double() * DRAWS
    keep = expected > 5  # pool tiny cells
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    rest_o, rest_e = counts[~keep].sum(), expected[~keep].sum()
    if rest_e > 0:
        stat += (rest_o - rest_e) ** 2 / rest_e
    df = int(keep.sum()) + int(rest_e > 0) - 1
    assert res.stats.acceptance_by_position[0] > 0.05  # the draft is really being accepted sometimes
    assert float(stat) < _chi2_threshold(df), f"chi2 {float(stat):.1f} df {df}"


@pytest.mark.parametrize("topk", [1, 3], ids=["chain", "tree"])
def test_sampled_tokens_follow_target(topk):
    target, draft = _tiny_llama(0), _tiny_llama(1)
    _assert_follows_target(SpeculativeDecoder(target, draft, depth=3, topk=topk, total_tokens=8), target)


@pytest.mark.parametrize(
    ("draft_vocab", "topk"), [(0, 1), (6, 1), (0, 3)], ids=["chain", "chain-reduced-vocab", "tree"]
)
def test_dflash_sampled_tokens_follow_target(draft_vocab, topk):
    """A block's positions are drawn independently given the context, each with its q recorded: still lossless,
    also when the draft vocabulary leaves target tokens out (q is 0 there)."""
    target = _tiny_llama(0)
    torch.manual_seed(1)
    head = {"type": "dflash", "draft_vocab_size": draft_vocab, "block_size": 4, "num_layers": 1}
    drafter = build_drafter(head, target, torch.arange(V, 0, -1).float()).eval()
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    _assert_follows_target(SpeculativeDecoder(target, drafter, topk=topk, total_tokens=8), target)


def test_greedy_accept_walks_matching_children():
    tree = DraftTree(torch.tensor([[9, 4, 5, 6, 7]]), torch.tensor([[-1, 0, 0, 2, 2]]), depth=2)
    logits = torch.full((1, 5, 10), -1.0)
    logits[0, 0, 5] = 1  # root -> 5 (node 2)
    logits[0, 2, 7] = 1  # node 2 -> 7 (node 4)
    logits[0, 4, 3] = 1  # bonus 3
    acc = greedy_accept(tree, logits, width=2)
    assert acc.path.tolist() == [[0, 2, 4]] and acc.n_accepted.tolist() == [2] and acc.bonus.tolist() == [3]


def test_warp_probs_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert warp_probs(logits, 1.0, top_k=2).tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert warp_probs(logits, 1.0, top_p=0.7).tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert warp_probs(logits, 1.0, top_p=0.85).tolist() == pytest.approx(
        [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]
    )
