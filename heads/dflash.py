"""DFlash drafter (Chen, Liang & Liu, 2026, "DFlash: Block Diffusion for Flash Speculative Decoding",
arXiv:2602.06036): one drafter forward drafts a whole block.

The block is ``[root, mask x (K-1)]`` at positions ``root_pos .. root_pos + K - 1``; the output at block position
``i >= 1`` predicts the token *at* ``root_pos + i`` (a masked position is denoised in place, no shift). A stack of
``num_layers`` decoder layers of the target's shape reads the target through its keys and values ("KV
injection"): the aux states (hidden_states indices) of every committed position are concatenated and fused by
``fc`` and ``hidden_norm`` into a (C, H) context, and in every layer the layer's own k_proj / v_proj project the
context and the block alike. Queries come from the block only; the block attends to the whole context and
bidirectionally within itself. Attention has per-head q/k RMSNorms (Qwen3's layer, the one z-lab and speculators
use) and the target's rotary embedding at absolute positions. Logits come from ``norm`` and ``lm_head`` over a
reduced draft vocabulary (heads/vocab.py); as in the method, ``lm_head`` holds the target's rows and stays
frozen (``freeze_lm_head``) and the input embedding, mask token included, is the target's own (bound).

Context keys depend only on the target's features at their positions, so decoding caches them once per committed
position (decode/propose_dflash.py); block entries never stay in the cache.

Module names follow speculators' ``DFlashDraftModel`` (``layers.{i}.self_attn.{q,k,v,o}_proj``, ``.q_norm``,
``.k_norm``, ``layers.{i}.{input_layernorm, post_attention_layernorm}``, ``layers.{i}.mlp.{gate,up,down}_proj``,
``fc``, ``hidden_norm``, ``norm``, ``lm_head``, ``d2t``, ``t2d``), so its export copies the weights unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from selfspec.heads.arch import arch_classes, arch_config
from selfspec.heads.base import Drafter, TargetDims, project
from selfspec.heads.eagle3 import Eagle3MLP
from selfspec.heads.vocab import DraftVocab
from selfspec.utils import SelfspecError

BLOCK_SIZE_KEY = (
    "dflash_block_size"  # model.safetensors metadata: the block size the weights were trained with
)


@dataclass
class DFlashConfig(TargetDims):
    """User-facing: ``block_size`` K (positions per drafted block, the root included: K-1 drafted tokens per
    forward), ``num_layers``, ``aux_layers`` (HF hidden_states indices; empty: the method's spread, filled in),
    ``draft_vocab_size`` (0 or >= V: full vocabulary), ``mask_token_id`` (-1: build_drafter picks a token the
    training responses never use), ``freeze_lm_head``. Target-derived: sizes, ``target_config``."""

    type: str = "dflash"
    block_size: int = 8
    num_layers: int = 3
    aux_layers: list[int] = field(default_factory=list)
    draft_vocab_size: int = 32000
    mask_token_id: int = -1
    freeze_lm_head: bool = True


def default_aux_layers(num_target_layers: int, count: int) -> list[int]:
    """The method's spread: ``count`` states (one per draft layer) evenly from hidden_states 2 to L-2, i.e. z-lab's
    decoder-layer outputs 1 .. L-3; one layer reads the middle state. Shallow (test) targets spread over 1 .. L-1."""
    if count == 1:
        return [num_target_layers // 2 + 1]
    lo, hi = (2, num_target_layers - 2)
    if hi - lo < count - 1:
        lo, hi = 1, max(1, num_target_layers - 1)
    return [round(lo + i * (hi - lo) / (count - 1)) for i in range(count)]


def fill_defaults(
    config: DFlashConfig, token_counts: torch.Tensor | None = None, keep: list[int] | tuple[int, ...] = ()
) -> DFlashConfig:
    """Resolve the derived defaults in place: ``aux_layers`` (the method's spread) and ``mask_token_id``.

    The mask token is an input only; the method uses a token that never occurs as an anchor. Without a tokenizer
    the least frequent response token in ``token_counts`` (V,) stands in (ties: the smallest id, ``keep`` such
    as EOS/pad excluded); without counts, the last id.
    """
    if not config.aux_layers:
        config.aux_layers = default_aux_layers(config.num_target_layers, config.num_layers)
    if config.mask_token_id < 0:
        if token_counts is None:
            config.mask_token_id = config.vocab_size - 1
        else:
            score = token_counts.detach().double().cpu().reshape(-1).clone()
            score[torch.as_tensor(list(keep), dtype=torch.long)] = float("inf")
            config.mask_token_id = int(torch.argmin(score))  # the first minimum: the smallest id
    return config


def anchor_block_mask(anchors: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """(B, N) anchors -> (B, 1, N*K, T + N*K) bool, True = attend: a query of block j sees the context positions
    before its anchor and every position of its own block (the training layout of many blocks in one forward)."""
    b, n = anchors.shape
    dev = anchors.device
    q_anchor = anchors.repeat_interleave(block_size, dim=1)  # (B, N*K)
    ctx = torch.arange(seq_len, device=dev)[None, None, :] < q_anchor[..., None]  # (B, N*K, T)
    blk = torch.arange(n * block_size, device=dev) // block_size
    own = (blk[:, None] == blk[None, :]).expand(b, -1, -1)  # (B, N*K, N*K)
    return torch.cat([ctx, own], dim=-1)[:, None]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nH, T, D), cos/sin (B, T, D) -> rotated x."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class DFlashAttention(nn.Module):
    """Queries from the block; keys and values from [context | block] through the same projections."""

    def __init__(self, cfg: Any, norm_cls: type[nn.Module], layer_idx: int) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or h // self.num_heads
        self.layer_idx = layer_idx
        bias = bool(getattr(cfg, "attention_bias", False))
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=bias)
        self.q_norm = norm_cls(self.head_dim, eps=eps)
        self.k_norm = norm_cls(self.head_dim, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        pos_emb: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past_key_values: Any,
    ) -> torch.Tensor:
        b, k, _ = x.shape
        c, d = context.shape[1], self.head_dim
        both = torch.cat([context, x], dim=1)  # (B, C+K, H)
        q = self.q_norm(self.q_proj(x).view(b, k, -1, d)).transpose(1, 2)  # (B, nH, K, D)
        key = self.k_norm(self.k_proj(both).view(b, c + k, -1, d)).transpose(1, 2)  # (B, nKV, C+K, D)
        val = self.v_proj(both).view(b, c + k, -1, d).transpose(1, 2)  # (B, nKV, C+K, D)
        cos, sin = pos_emb  # (B, C+K, D)
        q, key = _rope(q, cos[:, c:], sin[:, c:]), _rope(key, cos, sin)
        if past_key_values is not None:
            key, val = past_key_values.update(key, val, self.layer_idx)  # (B, nKV, S+C+K, D)
        groups = self.num_heads // self.num_kv_heads
        key, val = repeat_kv(key, groups), repeat_kv(val, groups)
        out = nn.functional.scaled_dot_product_attention(q, key, val, attn_mask=mask)  # (B, nH, K, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, k, -1))  # (B, K, H)


class DFlashLayer(nn.Module):
    """Pre-norm decoder layer over the block; the context enters only through the attention's keys/values."""

    def __init__(self, cfg: Any, norm_cls: type[nn.Module], layer_idx: int) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = norm_cls(h, eps=eps)
        self.self_attn = DFlashAttention(cfg, norm_cls, layer_idx)
        self.post_attention_layernorm = norm_cls(h, eps=eps)
        self.mlp = Eagle3MLP(cfg)

    def forward(self, x, context, pos_emb, mask, past_key_values) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), context, pos_emb, mask, past_key_values)
        return x + self.mlp(self.post_attention_layernorm(x))


class DFlash(DraftVocab, Drafter):
    drafter_type = "dflash"

    def __init__(self, config: DFlashConfig) -> None:
        super().__init__(config)
        if config.block_size < 2 or config.num_layers < 1:
            raise SelfspecError(
                f"dflash needs block_size >= 2 and num_layers >= 1, got block_size={config.block_size}, "
                f"num_layers={config.num_layers}"
            )
        fill_defaults(config)
        if not 0 <= config.mask_token_id < config.vocab_size:
            raise SelfspecError(
                f"dflash mask_token_id {config.mask_token_id} is not a token of the target's vocabulary "
                f"[0, {config.vocab_size})"
            )
        cfg = arch_config(config.target_config)
        _, rotary_cls, norm_cls = arch_classes(cfg)
        h = config.hidden_size
        self.layers = nn.ModuleList(DFlashLayer(cfg, norm_cls, i) for i in range(config.num_layers))
        self.fc = nn.Linear(len(config.aux_layers) * h, h, bias=False)
        self.hidden_norm = norm_cls(h, eps=cfg.rms_norm_eps)
        self.norm = norm_cls(h, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(h, self.draft_vocab_size, bias=False)
        self.lm_head.weight.requires_grad_(not config.freeze_lm_head)
        self.rotary_emb = rotary_cls(cfg)  # non-persistent inv_freq buffer only
        self._init_vocab_buffers()

    @property
    def block_size(self) -> int:
        return int(self.config.block_size)

    def feature_layers(self) -> list[int]:
        return list(self.config.aux_layers)

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        """aux (B, T, n*H) = concat of the target's aux states -> context (B, T, H)."""
        return self.hidden_norm(self.fc(aux))

    def block_ids(self, first: torch.Tensor) -> torch.Tensor:
        """(...) first tokens -> (..., K) blocks ``[first, mask, ..., mask]``."""
        ids = torch.full((*first.shape, self.block_size), self.config.mask_token_id, device=first.device)
        ids[..., 0] = first
        return ids

    def forward(
        self,
        context: torch.Tensor,
        context_pos: torch.Tensor,
        block_ids: torch.Tensor,
        block_pos: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, C, H) fused (C may be 0), context_pos (B, C), block_ids / block_pos (B, Q), attention_mask
        (B, 1, Q, S+C+Q) bool (True = attend) over [cached | context | block] keys or None (all keys)
        -> (hidden (B, Q, H) after ``norm``, logits (B, Q, Vd) over the draft vocabulary)."""
        x = self.embed_tokens(block_ids).to(context.dtype)  # (B, Q, H)
        pos_emb = self.rotary_emb(x, torch.cat([context_pos, block_pos], dim=1))  # (B, C+Q, D) each
        for layer in self.layers:
            x = layer(x, context, pos_emb, attention_mask, past_key_values)
        hidden = self.norm(x)
        if hidden.numel() // hidden.shape[-1] > 64:  # training: the module call, so ZeRO-3 gathers its weight
            return hidden, self.lm_head(hidden)
        return hidden, project(hidden, self.lm_head.weight)  # == self.lm_head(hidden), faster for few rows

    def forward_anchors(
        self, context: torch.Tensor, input_ids: torch.Tensor, anchors: torch.Tensor
    ) -> torch.Tensor:
        """Training layout: one block per anchor, all in one forward. context (B, T, H) fused, input_ids (B, T),
        anchors (B, N) -> logits (B, N, K, Vd); block j starts with ``input_ids[anchors[:, j]]`` and sees the
        context before its anchor."""
        b, t = input_ids.shape
        n, k = anchors.shape[1], self.block_size
        ids = self.block_ids(input_ids.gather(1, anchors)).view(b, n * k)  # (B, N*K)
        pos = (anchors[..., None] + torch.arange(k, device=anchors.device)).view(b, n * k)
        ctx_pos = torch.arange(t, device=input_ids.device).expand(b, t)
        mask = anchor_block_mask(anchors, t, k)
        _, logits = self(context, ctx_pos, ids, pos, mask)
        return logits.view(b, n, k, -1)

    # -- the weights' record of their block size ---------------------------------------------------------

    def weights_metadata(self) -> dict[str, str]:
        return {BLOCK_SIZE_KEY: str(self.block_size)}

    def check_weights_metadata(self, metadata: dict[str, str], source: str | Path) -> None:
        trained = metadata.get(BLOCK_SIZE_KEY)
        if trained is not None and int(trained) != self.block_size:
            raise SelfspecError(
                f"{source}: config.json asks for block_size {self.block_size} but the weights were trained "
                f"with blocks of {trained}: set block_size back to {trained} (decode with depth=<n> to draft "
                "fewer tokens)"
            )
