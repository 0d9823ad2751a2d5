"""DFlash decoding: every block the decoder drafts from its cached context is the block a fresh forward over the
final sequence gives, at batch 4 with left padding (per-row context lengths); depths beyond the block are refused."""

from __future__ import annotations

import pytest
import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.decode.propose_dflash import DFlashProposer
from selfspec.heads import build_drafter, target_forward
from selfspec.utils import SelfspecError

NEW, K = 20, 4


@pytest.fixture(scope="module")
def drafter(tiny_target):
    model, _ = tiny_target
    torch.manual_seed(0)
    d = build_drafter({"type": "dflash", "draft_vocab_size": 128, "block_size": K, "num_layers": 2}, model)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return d.eval()


def test_cached_blocks_equal_recomputed(tiny_target, drafter, monkeypatch):
    model, tok = tiny_target
    torch.manual_seed(3)
    lengths = [9, 5, 7, 3]
    ids = torch.full((4, 9), tok.pad_token_id)
    mask = torch.zeros(4, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 9 - n :] = torch.randint(0, 250, (n,))
        mask[i, 9 - n :] = 1
    calls = []
    real = DFlashProposer._block_logits

    def spy(self, root, root_pos):
        out = real(self, root, root_pos)
        calls.append((root.clone(), root_pos.clone(), out.clone()))
        return out

    monkeypatch.setattr(DFlashProposer, "_block_logits", spy)
    res = SpeculativeDecoder(model, drafter).generate(
        ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=tok.pad_token_id, eos_token_id=-1
    )
    checked = 0
    for b, n in enumerate(lengths):
        seq = torch.cat([ids[b, 9 - n :], res.sequences[b, 9:]])[None]  # the row's real tokens, positions 0..
        with torch.no_grad():
            feats = target_forward(model, seq, layers=drafter.feature_layers()).hidden
            ctx = drafter.fuse(torch.cat(feats, -1))  # (1, T, H)
            for root, root_pos, logits in calls:
                r = int(root_pos[b])
                if r >= seq.shape[1]:  # past the emitted tokens: nothing to compare with
                    continue
                assert int(root[b]) == int(seq[0, r])
                _, fresh = drafter(ctx[:, :r], torch.arange(r)[None], drafter.block_ids(root[b : b + 1]),
                                   torch.arange(r, r + K)[None])  # fmt: skip
                torch.testing.assert_close(logits[b], fresh[0, 1:], rtol=1e-4, atol=1e-4)
                checked += 1
    assert checked >= 4 * 3


def test_depth_beyond_the_block_is_refused(tiny_target, drafter):
    model, _ = tiny_target
    with pytest.raises(SelfspecError, match=f"blocks of {K} .* depth=5 does not fit") as err:
        SpeculativeDecoder(model, drafter, depth=5).generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
    assert "\n" not in str(err.value)
