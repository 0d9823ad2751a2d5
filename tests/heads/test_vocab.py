"""EAGLE-3's reduced vocabulary: d2t/t2d built from token counts, and their validation."""

from __future__ import annotations

import pytest
import torch

from selfspec.heads import aux_layer_ids_for, build_vocab_map, default_aux_layers, validate_vocab_map
from selfspec.utils import SelfspecError


def test_build_vocab_map_keeps_most_frequent_sorted():
    counts = torch.tensor([5.0, 0, 9, 1, 7, 0, 3, 0])
    d2t, t2d = build_vocab_map(counts, 4, always_include=[7])
    ids = torch.arange(4) + d2t
    assert ids.tolist() == [0, 2, 4, 7]  # 9, 7, 5 and the required token 7; sorted by target id
    assert t2d.tolist() == [True, False, True, False, True, False, False, True]
    validate_vocab_map(d2t, t2d, 8)


def test_full_vocab_is_identity():
    d2t, t2d = build_vocab_map(torch.rand(10), 0)
    assert d2t.eq(0).all() and t2d.all()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d, t: (d + 1, t), "disagree|outside"),  # shifted d2t
        (lambda d, t: (d, t[:-1]), "target vocabulary has 8"),  # wrong vocab size
        (lambda d, t: (d.flip(0), t), "increasing|outside"),
        (lambda d, t: (d, t.int()), "bool"),
    ],
)
def test_validate_vocab_map_refuses_corruption(mutate, match):
    d2t, t2d = build_vocab_map(torch.tensor([5.0, 0, 9, 1, 7, 0, 3, 0]), 4)
    with pytest.raises(SelfspecError, match=match):
        validate_vocab_map(*mutate(d2t, t2d), 8)


def test_aux_layer_numbering():
    assert default_aux_layers(30) == [2, 15, 27]  # inputs of decoder layers 2, L//2, L-3
    assert default_aux_layers(4) == [1, 2, 3]
    assert aux_layer_ids_for("speculators", [2, 15, 27]) == [2, 15, 27]
    assert aux_layer_ids_for("sglang", [2, 15, 27]) == [1, 14, 26]
