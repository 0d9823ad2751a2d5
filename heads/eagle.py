"""EAGLE-1/2 drafter (Li et al., 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty", arXiv:2401.15077; EAGLE-2 "Faster Inference of Language Models with Dynamic Draft Trees",
arXiv:2406.16858 only changes how the tree is drafted, in decode/).

    x[t]      = fc(concat(embed(token[t+1]), feature[t]))       # (B, T, 2H) -> (B, T, H), with bias
    hidden[t] = decoder_layer(x)[t]                              # one layer of the target's architecture
    logits[t] = target_lm_head(hidden[t])                        # predicts token t+2

The order ``concat(embedding, feature)`` and ``fc`` with bias are EAGLE-1's checkpoint layout (export relies
on it). Regression target: the *post-norm* final state ``hidden_states[L]`` (the contract's feature, and what
EAGLE-1 regresses). Because ``hidden`` already lives in the normed space, logits are ``lm_head(hidden)``
without another norm, exactly as the target computes ``lm_head(hidden_states[L])``. Like EAGLE-1 the layer's
input norm is dropped (``input_norm=False``: fc's output feeds attention directly); set it True to keep it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfspec.heads.arch import arch_classes, arch_config, cache_len, causal_bool_mask
from selfspec.heads.base import Drafter, TargetDims, project
from selfspec.heads.vocab import build_vocab_map, draft_token_ids, validate_vocab_map


@dataclass
class EagleConfig(TargetDims):
    """User-facing: ``input_norm``, ``draft_vocab_size`` (0 or >= V: the target's whole vocabulary, as EAGLE-1;
    smaller: the most frequent tokens of the training data, projected through those rows of the target's
    lm_head only, as EAGLE-3's reduced vocabulary). Target-derived (filled by build_drafter): sizes and the
    target's architecture config (``target_config``, a transformers config dict) the decoder layer is built
    from."""

    type: str = "eagle"
    input_norm: bool = False
    draft_vocab_size: int = 0


class Eagle(Drafter):
    drafter_type = "eagle"

    def __init__(self, config: EagleConfig) -> None:
        super().__init__(config)
        cfg = arch_config(config.target_config)
        layer_cls, rotary_cls, _ = arch_classes(cfg)
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=True)
        self.layer = layer_cls(cfg, layer_idx=0)
        if not config.input_norm:
            self.layer.input_layernorm = nn.Identity()
        self.rotary_emb = rotary_cls(cfg)  # buffers only (inv_freq, non-persistent)
        if self.reduced:
            d2t, t2d = build_vocab_map(torch.zeros(config.vocab_size), self.draft_vocab_size)
            self.register_buffer("d2t", d2t)
            self.register_buffer("t2d", t2d)
        else:
            self.d2t = self.t2d = None  # full vocabulary: no map (and the EAGLE-1 checkpoint layout)
        self._head_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # frozen target rows

    @property
    def draft_vocab_size(self) -> int:
        v, vd = self.config.vocab_size, self.config.draft_vocab_size
        return v if vd <= 0 else min(vd, v)

    @property
    def reduced(self) -> bool:
        return self.draft_vocab_size < self.config.vocab_size

    def feature_layers(self) -> list[int]:
        return [self.config.num_target_layers]

    @torch.no_grad()
    def set_vocab_map(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        if not self.reduced:
            return  # the whole vocabulary is drafted
        validate_vocab_map(d2t, t2d, self.config.vocab_size)
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)
        self._head_rows = None

    def bind(self, target: nn.Module) -> Eagle:
        self._head_rows = None
        return super().bind(target)

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary ids -> target ids (``id + d2t[id]``; the identity with the full vocabulary)."""
        return draft_ids if self.d2t is None else draft_ids + self.d2t[draft_ids]

    def _head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the output projection: the target's lm_head, or its draft-vocabulary rows."""
        head = self.target_lm_head
        if not self.reduced:
            return head.weight, head.bias
        stale = self._head_rows is None or self._head_rows[0].device != head.weight.device
        # rows cached while decoding (inference mode) cannot be saved for a later training backward
        if stale or (self._head_rows[0].is_inference() and not torch.is_inference_mode_enabled()):
            rows = draft_token_ids(self).to(head.weight.device)
            self._head_rows = (head.weight[rows].contiguous(), None if head.bias is None else head.bias[rows])
        return self._head_rows

    def forward(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        with_logits: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """features (B, T, H) at t, input_ids (B, T) = tokens at t+1 -> (hidden (B, T, H), logits (B, T, V)).
        ``with_logits=False``: logits None, for a caller that projects only some rows with ``logits``.

        ``attention_mask``: None (causal over cache + new) or 4D bool (B, 1, T, S), True = attend.
        ``past_key_values``: a DynamicCache (layer 0 is this drafter's layer), updated in place.
        """
        emb = self.embed_tokens(input_ids).to(features.dtype)  # (B, T, H)
        x = self.fc(torch.cat([emb, features], dim=-1))  # (B, T, H)
        mask = causal_bool_mask(attention_mask, cache_len(past_key_values), x.shape[1], x.device)
        pos_emb = self.rotary_emb(x, position_ids)
        hidden = self.layer(
            x,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
            position_embeddings=pos_emb,
        )
        if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
            hidden = hidden[0]
        return hidden, self.logits(hidden) if with_logits else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V), or (..., Vd) over the draft vocabulary: the target's lm_head (rows)."""
        weight, bias = self._head()
        return project(hidden, weight, bias)
