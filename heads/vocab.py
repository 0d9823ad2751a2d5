"""A reduced draft vocabulary (EAGLE-3's, shared by DFlash): the Vd most frequent target tokens and the maps.

``d2t`` (Vd,) long with target_id = draft_id + d2t[draft_id]; ``t2d`` (V,) bool, True where a target token is in
the draft vocabulary. ``DraftVocab`` gives a drafter with its own ``lm_head`` over Vd rows the buffers, the
checks and the start from the target's rows.
"""

from __future__ import annotations

import torch
from torch import nn

from selfspec.utils import SelfspecError


def build_vocab_map(
    token_counts: torch.Tensor, draft_vocab_size: int, always_include: list[int] | tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) counts -> (d2t (Vd,) long, t2d (V,) bool) over the Vd most frequent tokens, sorted by target id.

    ``always_include`` (e.g. EOS and chat specials) are kept whatever their counts; ties break toward the
    smaller id, so the map is deterministic.
    """
    counts = token_counts.detach().double().cpu().reshape(-1)
    v = counts.numel()
    vd = v if draft_vocab_size <= 0 else min(draft_vocab_size, v)
    if len(set(always_include)) > vd:
        raise SelfspecError(
            f"draft_vocab_size={vd} is smaller than the {len(always_include)} required tokens"
        )
    score = counts.clone()
    score[torch.as_tensor(list(always_include), dtype=torch.long)] = float("inf")
    # Stable sort on -score keeps smaller ids first among equal counts.
    order = torch.sort(-score, stable=True).indices[:vd]
    ids = torch.sort(order).values  # (Vd,) target ids, ascending
    d2t = ids - torch.arange(vd)
    t2d = torch.zeros(v, dtype=torch.bool)
    t2d[ids] = True
    return d2t, t2d


def draft_token_ids(drafter: nn.Module) -> torch.Tensor | None:
    """(Vd,) the target ids of a drafter's draft vocabulary, in draft-id order; None without a vocab map."""
    d2t = getattr(drafter, "d2t", None)
    if d2t is None:
        return None
    return torch.arange(d2t.numel(), device=d2t.device) + d2t


def validate_vocab_map(d2t: torch.Tensor, t2d: torch.Tensor, vocab_size: int | None = None) -> None:
    """Raise one clear SelfspecError if d2t/t2d disagree with each other or with the target's vocabulary."""
    vd, v = d2t.numel(), t2d.numel()
    if vocab_size is not None and v != vocab_size:
        raise SelfspecError(
            f"t2d covers {v} tokens but the target vocabulary has {vocab_size}: wrong target?"
        )
    if t2d.dtype != torch.bool:
        raise SelfspecError(f"t2d must be a bool mask, got {t2d.dtype}")
    ids = torch.arange(vd, device=d2t.device) + d2t.long()
    if vd > v or (ids < 0).any() or (ids >= v).any():
        raise SelfspecError(f"d2t maps draft ids outside the target vocabulary [0, {v}): corrupt vocab map")
    if vd > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise SelfspecError("d2t does not map draft ids to strictly increasing target ids: corrupt vocab map")
    if int(t2d.sum()) != vd or not bool(t2d[ids.to(t2d.device)].all()):
        raise SelfspecError(
            f"d2t and t2d disagree ({vd} draft tokens, {int(t2d.sum())} marked in t2d, or different tokens): "
            "corrupt or shifted vocab map"
        )


class DraftVocab:
    """Mixin for a Drafter whose ``lm_head`` (Vd, H) scores the draft vocabulary; ``config`` has ``vocab_size``
    and ``draft_vocab_size`` (0 or >= V: the full vocabulary)."""

    lm_head: nn.Linear
    d2t: torch.Tensor
    t2d: torch.Tensor

    @property
    def draft_vocab_size(self) -> int:
        v, vd = self.config.vocab_size, self.config.draft_vocab_size
        return v if vd <= 0 else min(vd, v)

    def _init_vocab_buffers(self) -> None:
        """Identity-like maps over the first Vd ids until ``set_vocab_map``."""
        d2t, t2d = build_vocab_map(torch.zeros(self.config.vocab_size), self.draft_vocab_size)
        self.register_buffer("d2t", d2t)
        self.register_buffer("t2d", t2d)

    @torch.no_grad()
    def set_vocab_map(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        validate_vocab_map(d2t, t2d, self.config.vocab_size)
        if d2t.numel() != self.lm_head.out_features:
            raise SelfspecError(
                f"vocab map has {d2t.numel()} draft tokens, lm_head {self.lm_head.out_features}"
            )
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)

    @torch.no_grad()
    def init_from_target(self) -> None:
        """Start ``lm_head`` from the target's rows of the draft vocabulary and ``norm`` from its final norm."""
        ids = torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t
        w = self.target_lm_head.weight
        self.lm_head.weight.copy_(w[ids.to(w.device)])
        norm_w = getattr(self.target_norm, "weight", None)
        if norm_w is not None and norm_w.shape == self.norm.weight.shape:
            self.norm.weight.copy_(norm_w)

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary ids -> target ids (``id + d2t[id]``)."""
        return draft_ids + self.d2t[draft_ids]
