"""DFlash: the training layout equals single decode-time blocks, cached context equals recomputed context, the
method's defaults, and folders that do not fit (another family renamed, another block size) refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

from selfspec.heads import build_drafter, load_drafter, save_drafter, target_forward
from selfspec.heads.dflash import default_aux_layers
from selfspec.target import tokenizer_fingerprint
from selfspec.utils import SelfspecError

from .conftest import make_drafter

K = 4  # the conftest's dflash block size


def _context(d, target, ids):
    return d.fuse(torch.cat(target_forward(target, ids, layers=d.feature_layers()).hidden, -1))  # (B, T, H)


def test_blocks_in_one_forward_equal_single_blocks(tiny_target, input_ids):
    """Training runs one block per anchor in one forward; each equals a decode-time block over its own context."""
    target, _ = tiny_target
    d = make_drafter("dflash", target)
    anchors = torch.tensor([[0, 3, 8], [2, 5, 6]])
    with torch.no_grad():
        ctx = _context(d, target, input_ids)
        many = d.forward_anchors(ctx, input_ids, anchors)  # (B, N, K, Vd)
        for b in range(2):
            for j, a in enumerate(anchors[b].tolist()):
                _, one = d(ctx[b : b + 1, :a], torch.arange(a)[None], d.block_ids(input_ids[b : b + 1, a]),
                           torch.arange(a, a + K)[None])  # fmt: skip
                torch.testing.assert_close(one[0], many[b, j], rtol=1e-5, atol=1e-5)


def test_cached_context_equals_recomputed(tiny_target, input_ids):
    """Context keys cached over steps (the block's entries cropped) give the block a one-shot forward gives."""
    target, _ = tiny_target
    d = make_drafter("dflash", target)
    ids = input_ids[:1]
    pos = torch.arange(9)[None]
    with torch.no_grad():
        ctx = _context(d, target, ids)
        cache = DynamicCache()
        d(ctx[:, :5], pos[:, :5], d.block_ids(ids[:, 5]), torch.arange(5, 5 + K)[None], None, cache)
        cache.crop(-K)  # keep the context, drop the block (transformers 5: negative = remove)
        _, cached = d(
            ctx[:, 5:8], pos[:, 5:8], d.block_ids(ids[:, 8]), torch.arange(8, 8 + K)[None], None, cache
        )
        _, fresh = d(ctx[:, :8], pos[:, :8], d.block_ids(ids[:, 8]), torch.arange(8, 8 + K)[None])
    assert cache.get_seq_length() == 8 + K
    torch.testing.assert_close(cached, fresh, rtol=1e-5, atol=1e-5)


def test_method_defaults(tiny_target):
    assert default_aux_layers(30, 3) == [2, 15, 28]  # z-lab's outputs of layers 1, 14, 27
    assert default_aux_layers(36, 5) == [
        2,
        10,
        18,
        26,
        34,
    ]  # z-lab's Qwen3-8B drafter: layers 1, 9, 17, 25, 33
    assert default_aux_layers(30, 1) == [16]
    assert default_aux_layers(4, 3) == [1, 2, 3]  # shallow targets spread over 1 .. L-1
    target, _ = tiny_target
    counts = torch.ones(259)
    counts[[5, 256, 257]] = 0  # EOS (256) and pad (257) never become the mask token
    d = build_drafter({"type": "dflash", "draft_vocab_size": 100}, target, counts)
    assert d.config.mask_token_id == 5 and d.feature_layers() == [1, 2, 3] and d.block_size == 8
    rows = d.draft_to_target(torch.arange(100))
    torch.testing.assert_close(d.lm_head.weight, target.lm_head.weight[rows])  # the target's rows, frozen
    assert not d.lm_head.weight.requires_grad
    with pytest.raises(SelfspecError, match="block_size >= 2"):
        build_drafter({"type": "dflash", "block_size": 1}, target)


def _save(d, path, tok):
    return save_drafter(d, path, "tiny-random", tokenizer_fingerprint(tok))


def test_other_family_renamed_to_dflash_is_refused(tiny_target, tmp_path):
    target, tok = tiny_target
    _save(make_drafter("eagle3", target), tmp_path / "d", tok)
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["selfspec"]["drafter_type"] = "dflash"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SelfspecError, match="says 'dflash' but the weights are a eagle3 drafter's") as err:
        load_drafter(tmp_path / "d", target=target)
    assert "\n" not in str(err.value)


def test_block_size_the_weights_do_not_fit_is_refused(tiny_target, tmp_path):
    target, tok = tiny_target
    _save(make_drafter("dflash", target), tmp_path / "d", tok)
    assert load_drafter(tmp_path / "d", target=target).block_size == K
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["selfspec"]["head"]["block_size"] = 16
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        SelfspecError, match="block_size 16 but the weights were trained with blocks of 4"
    ) as err:
        load_drafter(tmp_path / "d", target=target)
    assert "\n" not in str(err.value)
