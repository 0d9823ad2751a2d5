"""Shapes of every drafter family, Medusa's zero-init and separate blocks, and bind() staying untracked."""

from __future__ import annotations

import pytest
import torch

from selfspec.heads import DRAFTERS, Medusa, build_drafter, target_forward
from selfspec.utils import SelfspecError

from .conftest import FAMILIES, draft_outputs, make_drafter


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes(tiny_target, input_ids, family):
    target, _ = tiny_target
    d = make_drafter(family, target)
    b, t = input_ids.shape
    h, v = target.config.hidden_size, target.config.vocab_size
    out = draft_outputs(d, target, input_ids)
    if family == "medusa":
        assert out[0].shape == (3, b, t, v)
    elif family == "eagle":
        assert out[0].shape == (b, t, h) and out[1].shape == (b, t, v)
    elif family == "eagle3":
        assert out[0].shape == (b, t, h) and out[1].shape == (b, t, 100)
        assert d.d2t.shape == (100,) and d.t2d.shape == (v,) and int(d.t2d.sum()) == 100
    elif family == "dflash":
        assert out[0].shape == (b, t, 4, 100) and int(d.t2d.sum()) == 100
    else:
        assert out[0].shape == (b, t, v)
    assert isinstance(d, DRAFTERS[family]) and d.config.hidden_size == h and d.config.vocab_size == v


@pytest.mark.parametrize("family", FAMILIES)
def test_bind_adds_no_parameters(tiny_target, family):
    target, _ = tiny_target
    d = make_drafter(family, target)
    target_params = {id(p) for p in target.parameters()}
    assert not target_params & {id(p) for p in d.parameters()}
    assert not target_params & {id(t) for t in d.state_dict(keep_vars=True).values()}
    frozen = {n for n, p in d.named_parameters() if not p.requires_grad}
    assert not frozen or family == "draft_model" or (family == "dflash" and frozen == {"lm_head.weight"})
    if family != "draft_model":
        assert d.embed_tokens is target.get_input_embeddings()


def test_medusa_zero_init_is_target_prediction(tiny_target, input_ids):
    target, _ = tiny_target
    d = build_drafter({"type": "medusa", "num_heads": 4, "num_layers": 2}, target)
    out = target_forward(target, input_ids, layers=d.feature_layers())
    logits = d(out.hidden[0])  # (K, B, T, V)
    for k in range(4):
        torch.testing.assert_close(logits[k], out.logits)
    # Every block is its own parameter (no `[ResBlock] * n` sharing).
    weights = [blk.linear.weight for head in d.heads for blk in head]
    assert len({id(w) for w in weights}) == 4 * 2 == len({w.data_ptr() for w in weights})


def test_medusa_own_lm_head_starts_from_target(tiny_target, input_ids):
    target, _ = tiny_target
    d = build_drafter({"type": "medusa", "num_heads": 2, "own_lm_head": True}, target)
    assert isinstance(d, Medusa) and d.lm_head.shape == (2, 259, 64)
    out = target_forward(target, input_ids, layers=d.feature_layers())
    torch.testing.assert_close(d(out.hidden[0])[1], out.logits)
    assert d.lm_head.requires_grad and d.lm_head.data_ptr() != target.lm_head.weight.data_ptr()


def test_target_forward_layers(tiny_target, input_ids):
    target, _ = tiny_target
    full = target(input_ids, output_hidden_states=True)
    out = target_forward(target, input_ids, layers=[4, 0, 2])
    assert len(out.hidden) == 3
    torch.testing.assert_close(out.hidden[0], full.hidden_states[4])
    torch.testing.assert_close(out.hidden[2], full.hidden_states[2])
    torch.testing.assert_close(out.logits, target.lm_head(out.hidden[0]))  # index L is post-norm
    assert target_forward(target, input_ids).hidden == ()


def test_unknown_type_and_key(tiny_target):
    target, _ = tiny_target
    with pytest.raises(SelfspecError, match="unknown drafter type 'hydra'"):
        build_drafter({"type": "hydra"}, target)
    with pytest.raises(SelfspecError, match="num_hedas"):
        build_drafter({"type": "medusa", "num_hedas": 3}, target)


def test_unbound_drafter_says_so(tiny_target, input_ids):
    from selfspec.heads import Eagle, EagleConfig
    from selfspec.heads.registry import fill_target_dims

    target, _ = tiny_target
    d = Eagle(fill_target_dims(EagleConfig(), target))
    with pytest.raises(SelfspecError, match="not bound"):
        d(torch.zeros(1, 2, 64), input_ids[:1, :2], torch.arange(2)[None])


def test_deepcopy_keeps_target_parts_shared(tiny_target):
    import copy

    target, _ = tiny_target
    d = make_drafter("eagle3", target)
    c = copy.deepcopy(d)
    assert c.embed_tokens is target.get_input_embeddings() and c.fc.weight is not d.fc.weight
