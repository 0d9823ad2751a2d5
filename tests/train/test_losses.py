"""Loss functions: the restricted Medusa projection on the tiny target, and hand-computed alignment references
for every family (which target row and which loss_mask entry each drafter row is compared with)."""

from __future__ import annotations

import pytest
import torch

from selfspec.heads import build_drafter, target_forward
from selfspec.heads.vocab import draft_token_ids
from selfspec.target import output_logits
from selfspec.train.config import LossConf
from selfspec.train.losses import (
    LOSSES,
    draft_model_loss,
    eagle3_loss,
    eagle_loss,
    medusa_loss,
    soft_ce,
    ttt_mask,
)


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


@pytest.mark.parametrize(
    "head",
    [
        {"type": "eagle3", "draft_vocab_size": 64, "ttt_steps": 3},
        {"type": "eagle", "draft_vocab_size": 64},
        {"type": "dflash", "draft_vocab_size": 64, "block_size": 4, "num_layers": 1},
    ],
    ids=lambda h: h["type"],
)
def test_draft_vocabulary_logits_give_the_full_logits_loss(tiny_target, head):
    """Training steps pass only the draft vocabulary's target logits (the trainer's cheap path): the loss is the
    full-logits one; agreement then counts the best draft-vocabulary token as the target's top-1, so it equals the
    full count when the target's top-1 is in the draft vocabulary, and is never below it otherwise."""
    target, _ = tiny_target
    torch.manual_seed(0)
    drafter = build_drafter(
        head, target, torch.rand(target.config.vocab_size)
    ).eval()  # dflash: fixed anchors
    ids = torch.randint(0, target.config.vocab_size, (2, 24))
    mask = (torch.rand(2, 24) > 0.3).long()
    out = target_forward(target, ids, layers=drafter.feature_layers() + [target.config.num_hidden_layers])
    feats, final = out.hidden[:-1], out.hidden[-1]
    rows = draft_token_ids(drafter)
    fn, lc = LOSSES[drafter.drafter_type], LossConf()
    full = fn(drafter, ids, mask, output_logits(target, final), feats, lc)
    part = fn(drafter, ids, mask, output_logits(target, final, rows), feats, lc)
    torch.testing.assert_close(part.per_head, full.per_head)
    torch.testing.assert_close(part.count, full.count)
    assert bool((part.correct >= full.correct).all())
    # Raise every draft-vocabulary logit alike: the restricted distribution (and the loss) stays, and the target's
    # top-1 is now always in the draft vocabulary, where both paths must count the same agreement.
    lifted = output_logits(target, final).clone()
    lifted[..., rows] += 100.0
    lifted_full = fn(drafter, ids, mask, lifted, feats, lc)
    torch.testing.assert_close(lifted_full.per_head, full.per_head)
    torch.testing.assert_close(lifted_full.correct, part.correct)
    assert float(full.count.sum()) > 0


@pytest.mark.parametrize("freeze", [False, True])
def test_eagle3_feature_noise_and_frozen_lm_head(tiny_target, freeze):
    """``feature_noise`` perturbs EAGLE-3's fused inputs while training only (evaluation sees the target's states);
    ``freeze_lm_head`` keeps the lm_head at the target's draft-vocabulary rows: no gradient, same weights."""
    target, _ = tiny_target
    torch.manual_seed(0)
    head = {"type": "eagle3", "draft_vocab_size": 64, "ttt_steps": 2, "freeze_lm_head": freeze}
    drafter = build_drafter(head, target, torch.rand(target.config.vocab_size))
    ids = torch.randint(0, target.config.vocab_size, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    out = target_forward(target, ids, layers=drafter.feature_layers())
    quiet, noisy = LossConf(), LossConf(feature_noise=2.0)
    drafter.eval()
    torch.testing.assert_close(
        eagle3_loss(drafter, ids, mask, out.logits, out.hidden, noisy).loss,
        eagle3_loss(drafter, ids, mask, out.logits, out.hidden, quiet).loss,
    )
    drafter.train()
    clean = eagle3_loss(drafter, ids, mask, out.logits, out.hidden, quiet).loss
    loss = eagle3_loss(drafter, ids, mask, out.logits, out.hidden, noisy).loss
    assert not torch.allclose(loss, clean)
    start = drafter.lm_head.weight.detach().clone()
    loss.backward()
    assert drafter.lm_head.weight.requires_grad is not freeze
    assert (drafter.lm_head.weight.grad is None) is freeze
    assert drafter.fc.weight.grad is not None and float(drafter.fc.weight.grad.abs().sum()) > 0
    torch.testing.assert_close(drafter.lm_head.weight, start)


# -- reference cases: which target row and which loss_mask entry each drafter row is compared with ------------
#
# Sequence x0 x1 x2 x3 (T = 4), vocabulary 5, loss_mask [0, 1, 0, 1] (the target wrote x1 and x3). The target's
# logits at row p predict x_{p+1}; row p's top token is TOP[p]. The expected pairs below are written out by hand
# from each paper's definition, not derived from the implementation's offsets. Each stub drafter returns a fixed
# logits row per drafter row, peaked at the top token of the target row it should be compared with, so a shifted
# comparison changes both the loss and the agreement count.

T, V = 4, 5
TOP = [0, 1, 2, 3]
MASK = torch.tensor([[0, 1, 0, 1]])
IDS = torch.tensor([[4, 3, 2, 1]])  # x0..x3


def _target_logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    rows = [
        torch.randn(V, generator=g) + 4 * torch.nn.functional.one_hot(torch.tensor(top), V) for top in TOP
    ]
    return torch.stack(rows)[None]  # (1, T, V)


def _drafter_rows(n: int, tops: dict[int, int], vocab: int = V, seed: int = 2) -> torch.Tensor:
    """(n, vocab) logits; row t peaked at ``tops[t]`` when given, else at the last id (no target row's top)."""
    g = torch.Generator().manual_seed(seed)
    peak = [tops.get(t, vocab - 1) for t in range(n)]
    return torch.randn(n, vocab, generator=g) + 3 * torch.nn.functional.one_hot(torch.tensor(peak), vocab)


def _ce(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the drafter row to the target row's distribution, written out."""
    return -(tgt.softmax(-1) * pred.log_softmax(-1)).sum()


def _expected(pairs: list[tuple[int, int]], table: torch.Tensor, tgt: torch.Tensor) -> tuple[float, int, int]:
    """(mean CE, count, agreements) over hand-listed (drafter row, target row) pairs."""
    ces = [_ce(table[t], tgt[p]) for t, p in pairs]
    agree = sum(int(table[t].argmax() == tgt[p].argmax()) for t, p in pairs)
    return float(torch.stack(ces).mean()), len(pairs), agree


class _StubMedusa(torch.nn.Module):
    """Head k's logits at row t are ``table[k, t]``; the 'hidden state' carries the row index."""

    drafter_type = "medusa"

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (K, T, V)

    def head_states(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.unsqueeze(0).expand(self.table.shape[0], *hidden.shape)  # (K, B, T, 1)

    def head_logits(self, z: torch.Tensor, k: int) -> torch.Tensor:
        return self.table[k][z[..., 0].long()]


def test_medusa_alignment_reference():
    # Head k at row t predicts x_{t+k+2}: compared with target row t+k+1, counted where mask[t+k+2].
    # head 0: t=0 -> x2 (mask 0, skipped), t=1 -> x3 (target row 2)
    # head 1: t=0 -> x3 (target row 2)
    pairs = {0: [(1, 2)], 1: [(0, 2)]}
    tgt = _target_logits()
    table = torch.stack([_drafter_rows(T, {t: TOP[p] for t, p in pairs[k]}, seed=k) for k in (0, 1)])
    rows = torch.arange(T, dtype=torch.float32).view(1, T, 1)
    lc = LossConf()
    got = medusa_loss(_StubMedusa(table), IDS, MASK, tgt, (rows,), lc)
    for k in (0, 1):
        ce, count, agree = _expected(pairs[k], table[k], tgt[0])
        assert float(got.per_head[k]) == pytest.approx(ce, rel=1e-5)
        assert (int(got.count[k]), int(got.correct[k])) == (count, agree) == (1, 1)
    assert float(got.loss) == pytest.approx(
        float(got.per_head[0] + lc.head_decay * got.per_head[1]), rel=1e-6
    )


class _StubEagle(torch.nn.Module):
    """Records what it is fed; returns a fixed hidden state and logits row per drafter row."""

    drafter_type = "eagle"
    d2t = None  # the whole vocabulary, as EAGLE-1

    def __init__(self, hidden: torch.Tensor, table: torch.Tensor) -> None:
        super().__init__()
        self.hidden, self.table, self.fed = hidden, table, []

    def forward(
        self, features, input_ids, position_ids, attention_mask=None, past_key_values=None, with_logits=True
    ):
        self.fed.append((features.clone(), input_ids.clone(), position_ids.clone()))
        r = input_ids.shape[1]
        return self.hidden[None, :r], self.table[None, :r] if with_logits else None

    def logits(self, hidden):  # row t's hidden state is 10 (t + 1)
        return self.table[(hidden[..., 0] / 10).long() - 1]


def test_eagle_alignment_reference():
    # Row t reads (feature_t, x_{t+1}) at position t and predicts x_{t+2}: its logits meet target row t+1, its
    # hidden state meets feature_{t+1}, counted where mask[t+2]. t=0 -> x2 (skipped), t=1 -> x3 (target row 2).
    pairs = [(1, 2)]
    feats = torch.tensor([0.0, 1.0, 4.0, 9.0]).view(1, T, 1)  # feature_t = t^2: every offset differs
    hidden = torch.tensor([[10.0], [20.0], [30.0]])  # the drafter's hidden state at rows 0..2
    tgt = _target_logits()
    table = _drafter_rows(T - 1, {1: TOP[2]})
    stub, lc = _StubEagle(hidden, table), LossConf()
    got = eagle_loss(stub, IDS, MASK, tgt, (feats,), lc)
    ((fed_feats, fed_ids, fed_pos),) = stub.fed
    assert fed_ids.tolist() == [[3, 2, 1]] and fed_pos.tolist() == [[0, 1, 2]]  # x1..x3 at positions 0..2
    assert fed_feats[0, :, 0].tolist() == [0.0, 1.0, 4.0]  # feature_0..feature_2
    ce, count, agree = _expected(pairs, table, tgt[0])
    assert float(got.per_head[0]) == pytest.approx(ce, rel=1e-5)
    assert (int(got.count[0]), int(got.correct[0])) == (count, agree) == (1, 1)
    # smooth L1 of row 1's hidden state (20) to feature_2 (4)
    assert float(got.extra["feature_loss"]) == pytest.approx(20.0 - 4.0 - 0.5)
    assert float(got.loss) == pytest.approx(lc.ce_weight * ce + lc.feature_weight * 15.5, rel=1e-5)


class _StubEagle3(torch.nn.Module):
    """Two TTT steps over a 3-token draft vocabulary mapped to target ids 1, 2, 3 (d2t = +1)."""

    drafter_type = "eagle3"

    def __init__(self, tables: torch.Tensor) -> None:
        super().__init__()
        self.config = type("C", (), {"ttt_steps": 2})()
        self.register_buffer("d2t", torch.ones(3, dtype=torch.long))
        self.tables, self.fed = tables, []  # (steps, R, 3)

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        return aux

    def forward(
        self, hidden, input_ids, position_ids, attention_mask=None, past_key_values=None, with_logits=True
    ):
        step = len(self.fed)
        self.fed.append((hidden.clone(), input_ids.clone(), position_ids.clone()))
        out = hidden + 100.0 * (step + 1)  # what the next step must be fed back
        return out, self.tables[step][None] if with_logits else None

    def logits(self, hidden):  # step j's output at row t is t + 100 (1 + .. + (j + 1))
        step = len(self.fed) - 1
        return self.tables[step][(hidden[..., 0] - 50.0 * (step + 1) * (step + 2)).long()]


def test_eagle3_training_time_test_alignment_reference():
    # Step j, row t: reads x_{t+j+1} at position t+j (step 0 on the target's fused features, step j on its own
    # step j-1 output), predicts x_{t+j+2}: target row t+j+1, counted where mask[t+j+2].
    # step 0: t=0 -> x2 (skipped), t=1 -> x3 (target row 2); step 1: t=0 -> x3 (target row 2)
    pairs = {0: [(1, 2)], 1: [(0, 2)]}
    tgt = _target_logits()
    draft_top = {p: TOP[p] - 1 for p in range(1, 4)}  # draft id d is target id d + 1
    tables = torch.stack(
        [_drafter_rows(T - 1, {t: draft_top[p] for t, p in pairs[j]}, vocab=3, seed=j) for j in (0, 1)]
    )
    feats = torch.arange(T, dtype=torch.float32).view(1, T, 1)
    stub, lc = _StubEagle3(tables), LossConf()
    got = eagle3_loss(stub, IDS, MASK, tgt, (feats,), lc)
    (h0, ids0, pos0), (h1, ids1, pos1) = stub.fed
    assert ids0.tolist() == [[3, 2, 1]] and pos0.tolist() == [[0, 1, 2]]  # x1..x3 at 0..2
    assert ids1.tolist()[0][:2] == [2, 1] and pos1.tolist() == [[1, 2, 3]]  # x2, x3 (then padding) at 1..3
    assert h0[0, :, 0].tolist() == [0.0, 1.0, 2.0]  # step 0 reads the fused features of rows 0..2
    assert torch.equal(h1, h0 + 100.0)  # step 1 reads step 0's output
    restricted = tgt[0][:, [1, 2, 3]]  # the target's distribution renormalised over the draft vocabulary
    for j in (0, 1):
        ce, count, _ = _expected(pairs[j], tables[j], restricted)
        assert float(got.per_head[j]) == pytest.approx(ce, rel=1e-5)
        assert (int(got.count[j]), int(got.correct[j])) == (count, 1)  # draft id + 1 == the target's top
    assert float(got.loss) == pytest.approx(float(got.per_head[0] + lc.ttt_decay * got.per_head[1]), rel=1e-6)


def test_ttt_mask_reference():
    """Step 1 over 3 rows: causal over the step-0 keys, then only the row's own step-1 key."""
    expected = [[1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1]]
    assert ttt_mask(3, 1, 1, torch.device("cpu"))[0, 0].int().tolist() == expected


class _StubDraftModel(torch.nn.Module):
    drafter_type = "draft_model"

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table, self.fed = table, []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.fed.append(input_ids.clone())
        return self.table[None]


def test_draft_model_alignment_reference():
    # Row t reads x_0..x_t and predicts x_{t+1}: target row t, counted where mask[t+1].
    # t=0 -> x1 (target row 0), t=1 -> x2 (skipped), t=2 -> x3 (target row 2)
    pairs = [(0, 0), (2, 2)]
    tgt = _target_logits()
    table = _drafter_rows(T, {t: TOP[p] for t, p in pairs})
    stub, lc = _StubDraftModel(table), LossConf()
    got = draft_model_loss(stub, IDS, MASK, tgt, (), lc)
    assert stub.fed[0].tolist() == IDS.tolist()
    kl = [
        (tgt[0, p].softmax(-1) * (tgt[0, p].log_softmax(-1) - table[t].log_softmax(-1))).sum()
        for t, p in pairs
    ]
    assert float(got.per_head[0]) == pytest.approx(float(torch.stack(kl).mean()), rel=1e-5)
    assert (int(got.count[0]), int(got.correct[0])) == (2, 2)
