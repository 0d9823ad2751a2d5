"""Tree structure, mask and positions on hand-made trees."""

from __future__ import annotations

import torch

from selfspec.decode.tree import (
    COMPACT_CHOICES,
    ancestor_mask,
    chain_parents,
    children_table,
    node_depths,
    select_best_nodes,
    static_tree,
    tree_position_ids,
    verification_mask,
)

#      0
#     / \
#    1   2
#   / \   \
#  3   4   5
#  |
#  6
PARENTS = torch.tensor([[-1, 0, 0, 1, 1, 2, 3]])


def test_ancestor_mask_and_depths():
    anc = ancestor_mask(PARENTS, depth=3)[0]
    expected = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}, 4: {0, 1, 4}, 5: {0, 2, 5}, 6: {0, 1, 3, 6}}
    for i, row in expected.items():
        assert set(anc[i].nonzero().flatten().tolist()) == row
    assert node_depths(PARENTS, 3).tolist() == [[0, 1, 1, 2, 2, 2, 3]]


def test_position_ids_follow_depth_per_row():
    parents = torch.cat([PARENTS, chain_parents(7, 1)])
    pos = tree_position_ids(parents, 6, torch.tensor([10, 3]))
    assert pos.tolist() == [[10, 11, 11, 12, 12, 12, 13], [3, 4, 5, 6, 7, 8, 9]]


def test_verification_mask_covers_cache_and_ancestors():
    valid = torch.tensor([[False, True, True]])  # a left-padding slot, two committed keys
    mask = verification_mask(valid, ancestor_mask(PARENTS, 3))
    assert mask.shape == (1, 1, 7, 10) and mask.dtype == torch.bool
    assert not mask[0, 0, :, 0].any() and mask[0, 0, :, 1:3].all()
    assert mask[0, 0, 6, 3:].tolist() == [True, True, False, True, False, False, True]
    assert mask[0, 0, 5, 3:].tolist() == [True, False, True, False, False, True, False]


def test_children_table():
    kids = children_table(PARENTS, width=2)[0]
    assert kids.tolist() == [[1, 2], [3, 4], [5, -1], [6, -1], [-1, -1], [-1, -1], [-1, -1]]


def test_static_tree_from_choices():
    parents, depths, picks, depth = static_tree([(1,), (0,), (0, 0), (0, 1), (0, 0, 0)])
    assert parents.tolist() == [-1, 0, 0, 1, 1, 3]
    assert depths.tolist() == [0, 1, 1, 2, 2, 3] and picks.tolist() == [0, 0, 1, 0, 1, 0] and depth == 3
    parents, _, _, depth = static_tree(COMPACT_CHOICES)
    assert parents.numel() == 16 and depth == 4


def test_select_best_nodes_is_closed_under_ancestors():
    # candidates: 0,1 children of root; 2,3 children of 0; 4 child of 2 (scores strictly decrease along paths)
    scores = torch.tensor([[-0.1, -2.0, -0.3, -5.0, -0.4]])
    par = torch.tensor([[-1, -1, 0, 0, 2]])
    kept, tree_par = select_best_nodes(scores, par, keep=3)
    assert kept.tolist() == [[0, 2, 4]]
    assert tree_par.tolist() == [[0, 1, 2]]
