"""KV commit: after a tree forward and commit, the cache equals the cache of the accepted path alone."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from selfspec.decode.kv import KVState
from selfspec.decode.tree import ancestor_mask


def _fake_cache(keys: torch.Tensor) -> DynamicCache:
    cache = DynamicCache()
    cache.update(keys.clone(), keys.clone() + 100, 0)
    return cache


def test_commit_gathers_kept_slots_per_row():
    # 2 rows, 3 committed slots (row 1 has a hole at slot 2), 4 new slots appended by one forward
    keys = torch.arange(2 * 7, dtype=torch.float).view(2, 1, 7, 1)  # (B, heads, S, D)
    kv = KVState(
        _fake_cache(keys), torch.tensor([[True, True, True], [True, True, False]]), torch.tensor([3, 2])
    )
    kv.commit(torch.tensor([[0, 2, 3], [1, 0, 0]]), torch.tensor([3, 1]))
    got = kv.cache.layers[0].keys[:, 0, :, 0]
    assert got.shape == (2, 6)
    assert got[0].tolist() == [0, 1, 2, 3, 5, 6]  # slots 3+0, 3+2, 3+3 after the committed 0..2
    assert got[1, :3].tolist() == [7, 8, 11]  # row 1: its 2 keys, then new slot 1 (= 7 + 3 + 1)
    assert kv.valid.tolist() == [[True] * 6, [True, True, True, False, False, False]]
    assert kv.length.tolist() == [6, 3]
    assert torch.equal(kv.cache.layers[0].values, kv.cache.layers[0].keys + 100)


def test_tree_commit_matches_plain_forward(tiny_target):
    """Prefix + a tree, commit one root-to-leaf path: next-token logits equal those of the plain sequence."""
    model, _ = tiny_target
    torch.manual_seed(1)
    prefix = torch.randint(0, 250, (1, 6))
    tree_tokens = torch.tensor([[11, 21, 22, 31, 32]])  # root 11; 21, 22 under it; 31 under 21; 32 under 22
    parents = torch.tensor([[-1, 0, 0, 1, 2]])
    kv = KVState.empty(1, "cpu")
    causal = torch.ones(6, 6, dtype=torch.bool).tril()[None]
    model(
        prefix, attention_mask=kv.mask(causal), position_ids=torch.arange(6)[None], past_key_values=kv.cache
    )
    kv.start(torch.ones(1, 6, dtype=torch.bool))
    anc = ancestor_mask(parents, 2)
    pos = 6 + anc.sum(-1) - 1
    model(tree_tokens, attention_mask=kv.mask(anc), position_ids=pos, past_key_values=kv.cache)
    kv.commit(torch.tensor([[0, 2, 4]]), torch.tensor([3]))  # path 11 -> 22 -> 32
    nxt = torch.tensor([[5]])
    got = model(nxt, attention_mask=kv.mask(torch.ones(1, 1, 1, dtype=torch.bool)),
                position_ids=torch.tensor([[9]]), past_key_values=kv.cache).logits[0, -1]  # fmt: skip
    plain = torch.cat([prefix, torch.tensor([[11, 22, 32, 5]])], 1)
    want = model(plain).logits[0, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
