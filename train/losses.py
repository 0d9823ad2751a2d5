"""Training objectives of the drafter families, all distilled from the frozen target's own distributions.

Indexing (one convention for every family): sequence ``x_0 .. x_{T-1}``; the target's logits at position p
predict ``x_{p+1}``. A drafter row t that predicts ``x_{t+s}`` is compared with the target's logits at
``t+s-1`` and counts only where ``loss_mask[t+s]`` (the predicted token is one the target wrote).

- Medusa (Cai et al., 2024): head k at t predicts x_{t+k+2}; CE to the target's softened distribution at
  t+k+1 (or to its argmax), head k weighted ``head_decay**k``.
- EAGLE (Li et al., 2024): row t reads (feature_t, x_{t+1}) at position t; smooth L1 of its hidden to the
  target feature at t+1, plus CE of its logits to the target's distribution at t+1.
- EAGLE-3 (Li et al., 2025): training-time test. Step 0 runs on the fused target features; step j reads its
  own step-(j-1) hidden at row t with token x_{t+j+1} at position t+j, and predicts x_{t+j+2}. Attention:
  the keys of every step are kept in one DynamicCache (drafter KV of step i at row t = draft position t+i);
  a step-j query at row t sees the step-0 keys of rows <= t (the prefix, built from target features) and
  the keys of row t at steps 1..j (its own draft chain), exactly what a chain drafted at decode time sees.
  This is SpecForge's/EAGLE-3's layout, written with the drafter's public (mask, cache) interface instead
  of a custom attention. CE over the draft vocabulary to the target distribution restricted to it
  (renormalised), step j weighted ``ttt_decay**j``.
- Draft model: forward KL (or reverse KL / JSD) to the target's distribution at every position.
- DFlash (Chen et al., 2026): per sequence, ``dflash_anchors`` random anchors a among the positions the target
  wrote (loss_mask[a] = 1); each becomes a block ``[x_a, mask x (K-1)]`` at positions a .. a+K-1 that sees the
  fused target features at positions < a and its own block (all blocks in one forward, heads/dflash.py).
  Block position i >= 1 predicts x_{a+i}: CE over the draft vocabulary to the target's distribution at a+i-1
  restricted to it (renormalised, as EAGLE-3), where loss_mask[a+i]; position i weighted
  ``exp(-(i-1) / dflash_gamma)`` (the method's decay: early positions gate every later acceptance). Anchors come
  from the global RNG while training (its state is checkpointed) and from a fixed seed in evaluation.

Per-head / per-step losses stay tensors (``LossOutput``); the loop reduces them only when it logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from selfspec.heads.vocab import draft_token_ids
from selfspec.utils import SelfspecError


@dataclass
class LossOutput:
    loss: torch.Tensor  # () weighted total, back-propagated
    per_head: torch.Tensor  # (K,) unweighted loss of each head / TTT step
    correct: torch.Tensor  # (K,) valid positions where the drafter's top-1 is the target's top-1
    count: torch.Tensor  # (K,) valid positions
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. EAGLE's feature loss


def _rows(pred: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only the valid rows: (B, n, V) x2 and (B, n) -> (N, V) x2, in fp32 for the softmaxes."""
    m = mask.bool()
    return pred[m].float(), tgt[m].float()


def in_draft_vocab(tgt: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits -> (the draft vocabulary's columns in draft-id order (N, Vd), the target's top-1 (N,) as a
    target id), for a drafter whose ``ids`` (Vd,) are ``draft_token_ids``.

    ``tgt`` is the full (N, V) or already those columns (N, Vd): the trainer's cheap path (``Trainer.inputs``
    projects only the draft vocabulary's rows of the target's lm_head while training), where the top-1 is the best
    draft-vocabulary token. Evaluation passes full logits, so eval agreement counts a target top-1 outside the
    draft vocabulary as a miss; the loss is the same either way (restricted, renormalised).
    """
    if tgt.shape[-1] == ids.numel():
        return tgt, ids[tgt.argmax(-1)]
    return tgt[:, ids], tgt.argmax(-1)


def soft_ce(pred: torch.Tensor, tgt: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, V) drafter logits, (N, V) target logits -> (N,) cross-entropy to the target's distribution."""
    p = F.softmax(tgt / temperature, dim=-1)
    return -(p * F.log_softmax(pred / temperature, dim=-1)).sum(-1)


def divergence(pred: torch.Tensor, tgt: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """(N, V) x2 -> (N,): forward KL(p_target || q_draft), reverse KL(q || p) or Jensen-Shannon."""
    logp = F.log_softmax(tgt / temperature, dim=-1)
    logq = F.log_softmax(pred / temperature, dim=-1)
    if kind == "forward_kl":
        return (logp.exp() * (logp - logq)).sum(-1)
    if kind == "reverse_kl":
        return (logq.exp() * (logq - logp)).sum(-1)
    if kind == "jsd":
        logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - torch.log(torch.tensor(2.0))
        return 0.5 * ((logp.exp() * (logp - logm)).sum(-1) + (logq.exp() * (logq - logm)).sum(-1))
    raise SelfspecError(f"train.loss.divergence={kind!r}: use forward_kl, reverse_kl or jsd")


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a possibly empty (N,) tensor (0 when empty, keeping the graph)."""
    return x.sum() / max(1, x.numel())


def _stack(
    losses: list[torch.Tensor],
    correct: list[torch.Tensor],
    count: list[int],
    weights: list[float],
    device: torch.device,
) -> LossOutput:
    per_head = torch.stack(losses)  # (K,)
    w = torch.tensor(weights, device=device, dtype=per_head.dtype)
    return LossOutput(
        loss=(w * per_head).sum(),
        per_head=per_head,
        correct=torch.stack(correct).float(),
        count=torch.tensor(count, device=device, dtype=torch.float32),
    )


def medusa_loss(
    drafter: nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    tgt_logits: torch.Tensor,
    features: tuple[torch.Tensor, ...],
    lc: Any,
) -> LossOutput:
    z = drafter.head_states(features[0])  # (K, B, T, H)
    num_heads, _, seq, _ = z.shape
    losses, correct, count = [], [], []
    for k in range(num_heads):
        n = max(0, seq - k - 2)  # rows whose predicted token x_{t+k+2} exists
        m = loss_mask[:, k + 2 : k + 2 + n].bool()
        pred = drafter.head_logits(z[k, :, :n][m], k).float()  # (N, V): only rows that count hit the lm_head
        tgt = tgt_logits[:, k + 1 : k + 1 + n][m].float()
        if lc.medusa_soft:
            row_loss = soft_ce(pred, tgt, lc.temperature)
        else:
            row_loss = F.cross_entropy(pred, tgt.argmax(-1), reduction="none")
        losses.append(_mean(row_loss))
        correct.append((pred.argmax(-1) == tgt.argmax(-1)).sum())
        count.append(pred.shape[0])
    weights = [lc.head_decay**k for k in range(num_heads)]
    return _stack(losses, correct, count, weights, z.device)


def eagle_loss(
    drafter: nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    tgt_logits: torch.Tensor,
    features: tuple[torch.Tensor, ...],
    lc: Any,
) -> LossOutput:
    feat = features[0]  # (B, T, H)
    b, seq = input_ids.shape
    r = seq - 1  # rows t = 0 .. T-2 read (feature_t, x_{t+1})
    pos = torch.arange(r, device=input_ids.device).expand(b, r)
    inp = feat[:, :r]
    if lc.feature_noise > 0 and drafter.training:  # EAGLE-1: robustness to its own imperfect features
        inp = inp + (torch.rand_like(inp) - 0.5) * lc.feature_noise
    hidden, _ = drafter(inp, input_ids[:, 1:], pos, with_logits=False)  # (B, R, H)
    n = seq - 2  # rows whose predicted token x_{t+2} exists
    m = loss_mask[:, 2 : 2 + n].bool()
    pred = drafter.logits(hidden[:, :n][m]).float()  # (N, V or Vd): only rows that count
    tgt = tgt_logits[:, 1 : 1 + n][m].float()
    ids = draft_token_ids(drafter)
    if ids is not None:  # the target's distribution restricted to the draft vocabulary, as EAGLE-3
        tgt, top1 = in_draft_vocab(tgt, ids)
        correct = (ids[pred.argmax(-1)] == top1).sum()
    else:
        correct = (pred.argmax(-1) == tgt.argmax(-1)).sum()
    ce = _mean(soft_ce(pred, tgt, lc.temperature))
    reg = F.smooth_l1_loss(hidden[:, :n][m].float(), feat[:, 1 : 1 + n][m].float(), reduction="none")
    feat_loss = _mean(reg.mean(-1))
    out = _stack([ce], [correct], [pred.shape[0]], [lc.ce_weight], hidden.device)
    out.loss = out.loss + lc.feature_weight * feat_loss
    out.extra["feature_loss"] = feat_loss
    return out


def ttt_mask(rows: int, step: int, batch: int, device: torch.device) -> torch.Tensor:
    """(B, 1, R, R*(step+1)) bool: causal over the step-0 keys, the diagonal of each later step's keys."""
    causal = torch.ones(rows, rows, dtype=torch.bool, device=device).tril()
    eye = torch.eye(rows, dtype=torch.bool, device=device)
    return torch.cat([causal] + [eye] * step, dim=1)[None, None].expand(batch, 1, rows, -1)


def _shift_ids(input_ids: torch.Tensor, start: int, rows: int) -> torch.Tensor:
    """input_ids[:, start : start+rows], right-padded with 0 where the sequence ends (those rows never count)."""
    ids = input_ids[:, start : start + rows]
    return F.pad(ids, (0, rows - ids.shape[1]), value=0)


def eagle3_loss(
    drafter: nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    tgt_logits: torch.Tensor,
    features: tuple[torch.Tensor, ...],
    lc: Any,
) -> LossOutput:
    b, seq = input_ids.shape
    r = seq - 1
    steps = int(drafter.config.ttt_steps)
    draft_to_target = draft_token_ids(drafter)  # (Vd,) target id of each draft id
    aux = torch.cat(features, dim=-1)[:, :r]  # (B, R, 3H)
    if lc.feature_noise > 0 and drafter.training:  # EAGLE-1's input noise, on the three fused states
        aux = aux + (torch.rand_like(aux) - 0.5) * lc.feature_noise
    hidden = drafter.fuse(aux)  # (B, R, H)
    cache = DynamicCache()
    base_pos = torch.arange(r, device=input_ids.device).expand(b, r)
    losses, correct, count = [], [], []
    for j in range(steps):
        mask = ttt_mask(r, j, b, input_ids.device)
        hidden, _ = drafter(
            hidden, _shift_ids(input_ids, 1 + j, r), base_pos + j, mask, cache, with_logits=False
        )
        n = max(0, seq - j - 2)  # rows whose predicted token x_{t+j+2} exists
        m = loss_mask[:, j + 2 : j + 2 + n].bool()
        pred = drafter.logits(hidden[:, :n][m]).float()  # (N, Vd): only rows that count hit the lm_head
        tgt = tgt_logits[:, j + 1 : j + 1 + n][m].float()
        tgt, top1 = in_draft_vocab(tgt, draft_to_target)
        losses.append(_mean(soft_ce(pred, tgt, lc.temperature)))
        correct.append((draft_to_target[pred.argmax(-1)] == top1).sum())
        count.append(pred.shape[0])
    weights = [lc.ttt_decay**j for j in range(steps)]
    return _stack(losses, correct, count, weights, input_ids.device)


def draft_model_loss(
    drafter: nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    tgt_logits: torch.Tensor,
    features: tuple[torch.Tensor, ...],
    lc: Any,
) -> LossOutput:
    logits = drafter(input_ids)  # (B, T, V)
    n = input_ids.shape[1] - 1
    pred, tgt = _rows(logits[:, :n], tgt_logits[:, :n], loss_mask[:, 1 : 1 + n])
    v = min(pred.shape[-1], tgt.shape[-1])  # a padded lm_head on either side
    loss = _mean(divergence(pred[:, :v], tgt[:, :v], lc.divergence, lc.temperature))
    return _stack([loss], [(pred.argmax(-1) == tgt.argmax(-1)).sum()], [pred.shape[0]], [1.0], logits.device)


def sample_anchors(
    loss_mask: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) loss mask -> (anchors (B, N) sorted, valid (B, N) bool), N = min(n, T): up to ``n`` distinct random
    positions per row with loss_mask 1 and a next token; rows with fewer fill up with invalid positions."""
    b, t = loss_mask.shape
    ok = loss_mask.bool().clone()
    ok[:, -1] = False  # the last position predicts nothing
    noise = torch.rand(b, t, generator=generator, device=loss_mask.device)
    anchors = (noise + ok.float()).topk(min(n, t), dim=-1).indices.sort(-1).values  # valid ones rank first
    return anchors, ok.gather(1, anchors)


def dflash_loss(
    drafter: nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    tgt_logits: torch.Tensor,
    features: tuple[torch.Tensor, ...],
    lc: Any,
) -> LossOutput:
    b, seq = input_ids.shape
    k = drafter.block_size
    gen = None
    if not drafter.training:  # the same anchors at every evaluation, and the training RNG untouched
        gen = torch.Generator(device=input_ids.device).manual_seed(0)
    anchors, valid = sample_anchors(loss_mask, int(lc.dflash_anchors), gen)  # (B, N)
    context = drafter.fuse(torch.cat(features, dim=-1))  # (B, T, H)
    logits = drafter.forward_anchors(context, input_ids, anchors)  # (B, N, K, Vd)
    draft_to_target = draft_token_ids(drafter)  # (Vd,)
    rows = torch.arange(b, device=input_ids.device)[:, None].expand_as(anchors)  # (B, N)
    losses, correct, count = [], [], []
    for i in range(1, k):
        pos = anchors + i  # (B, N) the predicted token's position
        m = valid & (pos < seq) & loss_mask.gather(1, pos.clamp(max=seq - 1)).bool()
        pred = logits[:, :, i][m].float()  # (M, Vd)
        tgt = tgt_logits[rows[m], pos[m] - 1].float()  # (M, V or Vd) the target's distribution for x_{a+i}
        tgt, top1 = in_draft_vocab(tgt, draft_to_target)
        losses.append(_mean(soft_ce(pred, tgt, lc.temperature)))
        correct.append((draft_to_target[pred.argmax(-1)] == top1).sum())
        count.append(pred.shape[0])
    weights = [math.exp(-(i - 1) / float(lc.dflash_gamma)) for i in range(1, k)]
    return _stack(losses, correct, count, weights, input_ids.device)


LossFn = Callable[..., LossOutput]
LOSSES: dict[str, LossFn] = {
    "medusa": medusa_loss,
    "eagle": eagle_loss,
    "eagle3": eagle3_loss,
    "draft_model": draft_model_loss,
    "dflash": dflash_loss,
}


class DrafterObjective(nn.Module):
    """The drafter plus its family's loss: the module DeepSpeed wraps, so one engine call is one loss.

    The drafter is its only child (``drafter.*`` in the state dict); the target's outputs come in as inputs.
    """

    def __init__(self, drafter: nn.Module, loss_cfg: Any) -> None:
        super().__init__()
        self.drafter = drafter
        self.loss_cfg = loss_cfg
        if drafter.drafter_type not in LOSSES:
            raise SelfspecError(f"no training objective for drafter type {drafter.drafter_type!r}")

    def forward(
        self,
        input_ids: torch.Tensor,
        loss_mask: torch.Tensor,
        tgt_logits: torch.Tensor,
        features: tuple[torch.Tensor, ...],
    ) -> tuple[Any, ...]:
        """LossOutput's fields as a tuple: ZeRO-3's hooks find tensors in tuples, not in dataclasses."""
        fn = LOSSES[self.drafter.drafter_type]
        o = fn(self.drafter, input_ids, loss_mask, tgt_logits, features, self.loss_cfg)
        return o.loss, o.per_head, o.correct, o.count, o.extra
