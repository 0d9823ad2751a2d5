"""Loss functions against straightforward references on the tiny target."""

from __future__ import annotations

import pytest
import torch

from selfspec.heads import build_drafter, target_forward
from selfspec.train.config import LossConf
from selfspec.train.losses import medusa_loss, soft_ce


@pytest.mark.parametrize("own_lm_head", [False, True])
def test_medusa_loss_projects_only_counted_rows_but_equals_full_logits(tiny_target, own_lm_head):
    target, _ = tiny_target
    drafter = build_drafter({"type": "medusa", "num_heads": 3, "own_lm_head": own_lm_head}, target)
    with torch.no_grad():
        for p in drafter.heads.parameters():
            p.normal_(std=0.1)  # leave the zero init, so heads differ from the target
    ids = torch.randint(0, 256, (2, 24))
    mask = (torch.rand(2, 24) > 0.4).long()
    out = target_forward(target, ids, layers=drafter.feature_layers())
    lc = LossConf()
    got = medusa_loss(drafter, ids, mask, out.logits, out.hidden, lc)

    logits = drafter(out.hidden[0])  # (K, B, T, V): the unrestricted computation
    for k in range(3):
        n = 24 - k - 2
        m = mask[:, k + 2 : k + 2 + n].bool()
        pred, tgt = logits[k, :, :n][m], out.logits[:, k + 1 : k + 1 + n][m]
        torch.testing.assert_close(got.per_head[k], soft_ce(pred, tgt, lc.temperature).mean())
        assert got.count[k] == m.sum()
        assert got.correct[k] == (pred.argmax(-1) == tgt.argmax(-1)).sum()
    got.loss.backward()
    assert all(p.grad is not None for p in drafter.heads.parameters())
