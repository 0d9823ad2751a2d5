"""KV commit: after a tree forward and commit, the cache equals the cache of the accepted path alone."""

from __future__ import annotations

import torch

from selfspec.decode.kv import KVState
from selfspec.decode.tree import ancestor_mask


def _write(kv: KVState, new: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One fake forward of one layer: plan with ``new`` (B, T, P+T), write ``values`` (B, T); return the mask."""
    mask = kv.mask(new)
    states = values[:, None, :, None].float()  # (B, heads=1, T, D=1)
    kv.cache.layers[0].update(states, states + 100)
    return mask


def test_commit_moves_kept_entries_per_row():
    kv = KVState.empty(2, "cpu", num_layers=1, max_len=12)
    causal = torch.ones(3, 3, dtype=torch.bool).tril().expand(2, 3, 3)
    _write(kv, causal, torch.tensor([[0, 1, 2], [10, 11, 12]]))
    kv.start(torch.tensor([[True, True, True], [False, True, True]]))  # row 1 left-padded
    tree = torch.ones(2, 4, 4, dtype=torch.bool)
    mask = _write(kv, tree, torch.tensor([[3, 4, 5, 6], [13, 14, 15, 16]]))
    assert mask.shape == (2, 1, 4, 7)
    assert mask[1, 0, 0].tolist() == [False, True, True, True, True, True, True]  # the pad stays hidden
    kv.commit(torch.tensor([[0, 2, 3], [1, 0, 0]]), torch.tensor([3, 1]))
    keys = kv.cache.layers[0].keys[:, 0, :, 0]
    assert keys[0, :6].tolist() == [0, 1, 2, 3, 5, 6]  # pending entries 0, 2, 3 after the committed ones
    assert keys[1, :4].tolist() == [10, 11, 12, 14]  # row 1 keeps pending entry 1 only
    assert kv.length.tolist() == [6, 4] and kv.pending == 0
    assert kv.valid[:, :7].tolist() == [[True] * 6 + [False], [False, True, True, True, False, False, False]]
    layer = kv.cache.layers[0]
    assert torch.equal(layer.values[:, :, :7], layer.keys[:, :, :7] + 100)  # K and V moved together


def test_pending_entries_stack_until_commit():
    """Two forwards in one step (draft tree levels): the second attends to the first's entries it names."""
    kv = KVState.empty(1, "cpu", num_layers=1, max_len=12)
    _write(kv, torch.ones(1, 2, 2, dtype=torch.bool).tril(), torch.tensor([[0, 1]]))
    kv.start(torch.ones(1, 2, dtype=torch.bool))
    _write(kv, torch.ones(1, 2, 2, dtype=torch.bool), torch.tensor([[2, 3]]))
    mask = _write(kv, torch.tensor([[[False, True, True]]]), torch.tensor([[4]]))
    assert mask[0, 0, 0].tolist() == [True, True, False, True, True]
    kv.rollback()
    assert kv.pending == 0 and kv.length.tolist() == [2]


def test_tree_commit_matches_plain_forward(tiny_target):
    """Prefix + a tree, commit one root-to-leaf path: next-token logits equal those of the plain sequence."""
    model, _ = tiny_target
    torch.manual_seed(1)
    prefix = torch.randint(0, 250, (1, 6))
    tree_tokens = torch.tensor([[11, 21, 22, 31, 32]])  # root 11; 21, 22 under it; 31 under 21; 32 under 22
    parents = torch.tensor([[-1, 0, 0, 1, 2]])
    kv = KVState.empty(1, "cpu", num_layers=model.config.num_hidden_layers, max_len=16)
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


def test_commit_stops_at_the_reserve():
    """A finished row keeps being stepped with the batch: past ``max_len - reserve`` it commits nothing more,
    so the next step's pending entries still fit, and the live row is untouched."""
    kv = KVState.empty(2, "cpu", num_layers=1, max_len=10, reserve=4)
    _write(kv, torch.ones(2, 2, 2, dtype=torch.bool).tril(), torch.tensor([[0, 1], [10, 11]]))
    kv.start(torch.ones(2, 2, dtype=torch.bool))
    for step in range(3):  # 3 entries a step for row 0, 1 for row 1
        _write(
            kv, torch.ones(2, 3, 3, dtype=torch.bool).tril(), torch.tensor([[2, 3, 4], [12, 13, 14]]) + step
        )
        kv.commit(torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.tensor([3, 1]), [3, 1])
    assert kv.host_length == [6, 5] and kv.length.tolist() == [6, 5]  # row 0 stopped at 10 - 4
    mask = _write(kv, torch.ones(2, 4, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.long))
    assert mask.shape[-1] == 10  # a full pending tree still fits
