"""EAGLE / EAGLE-3 with a DynamicCache and a 4D tree mask give the plain causal outputs (what decode relies on).

A prefix fills the cache; then a small tree is fed in one call: the true continuation (a chain) plus a
distractor branch that the chain must not see. The chain's outputs must equal the causal forward's.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from selfspec.heads import target_forward

from .conftest import make_drafter

PREFIX = 4


def _inputs(drafter, target, ids):
    feats = target_forward(target, ids, layers=drafter.feature_layers()).hidden
    if drafter.drafter_type == "eagle3":
        return drafter.fuse(torch.cat(feats, -1))
    return feats[0]


def _tree(ids: torch.Tensor, hidden: torch.Tensor):
    """Nodes: chain positions PREFIX..T-1, then one distractor sibling of the 2nd chain node (random token)."""
    b, t = ids.shape
    n_chain = t - PREFIX
    node_ids = torch.cat([ids[:, PREFIX:], (ids[:, PREFIX + 1 :][:, :1] + 7) % 256], 1)  # (B, n_chain + 1)
    node_h = torch.cat([hidden[:, PREFIX:], hidden[:, PREFIX:][:, :1].flip(0) * 0.5], 1)
    n = n_chain + 1
    pos = torch.cat([torch.arange(PREFIX, t), torch.tensor([PREFIX + 1])]).expand(b, n)
    mask = torch.zeros(b, 1, n, PREFIX + n, dtype=torch.bool)
    mask[..., :PREFIX] = True  # every node sees the prefix
    for i in range(n_chain):
        mask[:, 0, i, PREFIX : PREFIX + i + 1] = True  # chain node i: its ancestors and itself
    mask[:, 0, n - 1, PREFIX] = True  # distractor: child of chain node 0
    mask[:, 0, n - 1, PREFIX + n - 1] = True
    return node_ids, node_h, pos, mask


@pytest.mark.parametrize("family", ["eagle", "eagle3"])
def test_tree_with_cache_matches_causal(tiny_target, input_ids, family):
    target, _ = tiny_target
    d = make_drafter(family, target)
    b, t = input_ids.shape
    hidden = _inputs(d, target, input_ids)
    with torch.no_grad():
        want_h, want_logits = d(hidden, input_ids, torch.arange(t).expand(b, t))
        cache = DynamicCache()
        pre_h, _ = d(
            hidden[:, :PREFIX],
            input_ids[:, :PREFIX],
            torch.arange(PREFIX).expand(b, PREFIX),
            past_key_values=cache,
        )
        assert cache.get_seq_length() == PREFIX
        node_ids, node_h, pos, mask = _tree(input_ids, hidden)
        got_h, got_logits = d(node_h, node_ids, pos, attention_mask=mask, past_key_values=cache)
    n_chain = t - PREFIX
    torch.testing.assert_close(pre_h, want_h[:, :PREFIX], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_h[:, :n_chain], want_h[:, PREFIX:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_logits[:, :n_chain], want_logits[:, PREFIX:], rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == PREFIX + n_chain + 1
    assert cache.layers[0].keys.shape[2] == PREFIX + n_chain + 1


@pytest.mark.parametrize("family", ["eagle", "eagle3"])
def test_cache_without_mask_is_causal(tiny_target, input_ids, family):
    """No mask + a non-empty cache: the new tokens see the whole cache and each other causally."""
    target, _ = tiny_target
    d = make_drafter(family, target)
    b, t = input_ids.shape
    hidden = _inputs(d, target, input_ids)
    with torch.no_grad():
        want_h, _ = d(hidden, input_ids, torch.arange(t).expand(b, t))
        cache = DynamicCache()
        d(
            hidden[:, :PREFIX],
            input_ids[:, :PREFIX],
            torch.arange(PREFIX).expand(b, PREFIX),
            past_key_values=cache,
        )
        got_h, _ = d(
            hidden[:, PREFIX:],
            input_ids[:, PREFIX:],
            torch.arange(PREFIX, t).expand(b, t - PREFIX),
            past_key_values=cache,
        )
    torch.testing.assert_close(got_h, want_h[:, PREFIX:], rtol=1e-5, atol=1e-5)
