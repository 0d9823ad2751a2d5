"""EAGLE-3 drafter (Li et al., 2025, "EAGLE-3: Scaling up Inference Acceleration of Large Language Models
via Training-Time Test", arXiv:2503.01840).

Three target layers (low, mid, high) are fused by ``fc`` (3H -> H, no bias); one decoder layer whose
attention reads concat(norm(embedding of the next token), norm(hidden)) (width 2H) drafts the next state;
logits come from its own ``lm_head`` over a reduced draft vocabulary of Vd tokens. Module names follow
SGLang's ``LlamaForCausalLMEagle3`` (``fc``, ``midlayer.{input_layernorm, hidden_norm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}``, ``norm``, ``lm_head``, buffers ``d2t``, ``t2d``), so
export to SGLang / vLLM speculators is a renaming. The embedding is the target's (frozen, bound).

Aux layers: ``config.aux_layers`` stores **HF hidden_states indices** (index i = output of decoder layer i-1
= input of decoder layer i). EAGLE-3's reference code, vLLM and SGLang capture the *inputs* of decoder layers
(2, L//2, L-3) by default, i.e. hidden_states indices (2, L//2, L-3): that is the default here. vLLM /
speculators ``eagle_aux_hidden_state_layer_ids`` use the same numbering; SGLang's ids name decoder-layer
*outputs* (it captures ``id + 1``), so they are one lower (``aux_layer_ids_for``).

Vocabulary maps: ``d2t`` (Vd,) long with target_id = draft_id + d2t[draft_id]; ``t2d`` (V,) bool, True where a
target token is in the draft vocabulary (heads/vocab.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from selfspec.heads.arch import arch_classes, arch_config, cache_len, causal_bool_mask
from selfspec.heads.base import Drafter, TargetDims, project
from selfspec.heads.vocab import DraftVocab
from selfspec.utils import SelfspecError


@dataclass
class Eagle3Config(TargetDims):
    """User-facing: ``ttt_steps`` (training-time test depth, read by train/), ``draft_vocab_size`` (0 or >= V:
    full vocabulary), ``aux_layers`` (HF hidden_states indices; empty: EAGLE-3's default, filled by
    build_drafter). Target-derived: sizes, ``target_config`` (transformers config dict)."""

    type: str = "eagle3"
    ttt_steps: int = 7
    draft_vocab_size: int = 32000
    aux_layers: list[int] = field(default_factory=list)
    fc_init: str = "high"  # "high": fc starts as the identity on the high layer's state; "random"
    freeze_lm_head: bool = False  # True: lm_head stays the target's draft-vocabulary rows (EAGLE-1)


def default_aux_layers(num_layers: int) -> list[int]:
    """EAGLE-3's low/mid/high states: inputs of decoder layers (2, L//2, L-3) = hidden_states (2, L//2, L-3)."""
    if not 2 < num_layers // 2 < num_layers - 3:  # shallow (test) targets: three distinct states, in order
        return [1, max(1, num_layers // 2), max(1, num_layers - 1)]
    return [2, num_layers // 2, num_layers - 3]


def aux_layer_ids_for(engine: str, aux_layers: list[int]) -> list[int]:
    """Layer ids an engine's config must name to capture the states selfspec trained on.

    vLLM / speculators capture the input of decoder layer ``id`` (= hidden_states[id]), like selfspec's numbering;
    SGLang captures ``id + 1`` for a configured ``id`` (its ids name decoder-layer outputs), so its ids are one
    lower.
    """
    if engine in ("vllm", "speculators", "hf"):
        return list(aux_layers)
    if engine == "sglang":
        return [i - 1 for i in aux_layers]
    raise ValueError(f"unknown engine {engine!r}: use vllm, speculators, hf or sglang")


class Eagle3Attention(nn.Module):
    """Attention whose q/k/v read the 2H-wide concat(embedding, hidden); rotary as the target; sdpa."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or h // self.num_heads
        bias = bool(getattr(cfg, "attention_bias", False))
        self.q_proj = nn.Linear(2 * h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(2 * h, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(2 * h, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past_key_values: Any,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, nH, T, D)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, nKV, T, D)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *pos_emb)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, 0)  # (B, nKV, S, D)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        causal = mask is None and t > 1
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, H)


class Eagle3MLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.act_fn = ACT2FN[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Eagle3Layer(nn.Module):
    """SGLang's ``midlayer``: attention over concat(input_layernorm(emb), hidden_norm(hidden)), residual on hidden."""

    def __init__(self, cfg: Any, norm_cls: type[nn.Module]) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = norm_cls(h, eps=eps)
        self.hidden_norm = norm_cls(h, eps=eps)
        self.self_attn = Eagle3Attention(cfg)
        self.post_attention_layernorm = norm_cls(h, eps=eps)
        self.mlp = Eagle3MLP(cfg)

    def forward(self, emb, hidden, pos_emb, mask, past_key_values) -> torch.Tensor:
        x = torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], dim=-1)  # (B, T, 2H)
        hidden = hidden + self.self_attn(x, pos_emb, mask, past_key_values)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3(DraftVocab, Drafter):
    drafter_type = "eagle3"

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__(config)
        cfg = arch_config(config.target_config)
        _, rotary_cls, norm_cls = arch_classes(cfg)
        h = config.hidden_size
        self.fc = nn.Linear(3 * h, h, bias=False)
        self.midlayer = Eagle3Layer(cfg, norm_cls)
        self.norm = norm_cls(h, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(h, self.draft_vocab_size, bias=False)
        self.lm_head.weight.requires_grad_(not config.freeze_lm_head)
        self.rotary_emb = rotary_cls(cfg)  # non-persistent inv_freq buffer only
        self._init_vocab_buffers()

    def feature_layers(self) -> list[int]:
        return list(self.config.aux_layers)

    @torch.no_grad()
    def init_from_target(self) -> None:
        """The mixin's start (lm_head rows, final norm) and, with ``fc_init="high"``, ``fc`` as the identity on
        the high layer (the state closest to the logits)."""
        if self.config.fc_init not in ("high", "random"):
            raise SelfspecError(f"eagle3 fc_init={self.config.fc_init!r}: use high or random")
        if self.config.fc_init == "high":
            h = self.config.hidden_size
            self.fc.weight.zero_()
            self.fc.weight[:, 2 * h :].copy_(torch.eye(h))
        super().init_from_target()

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        """aux (B, T, 3H) = concat of the target's low/mid/high states -> (B, T, H)."""
        return self.fc(aux)

    def forward(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        with_logits: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H) (fused, or this drafter's previous output), input_ids (B, T) = tokens at t+1
        -> (hidden (B, T, H) pre-norm, logits (B, T, Vd) over the draft vocabulary). ``with_logits=False``:
        logits None, for a caller that projects only some rows with ``logits`` (training's counted rows).
        """
        emb = self.embed_tokens(input_ids).to(hidden.dtype)  # (B, T, H)
        mask = causal_bool_mask(attention_mask, cache_len(past_key_values), hidden.shape[1], hidden.device)
        pos_emb = self.rotary_emb(hidden, position_ids)
        out = self.midlayer(emb, hidden, pos_emb, mask, past_key_values)  # (B, T, H)
        return out, self.logits(out) if with_logits else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) pre-norm states -> (..., Vd) draft-vocabulary logits."""
        h = self.norm(hidden)
        # many rows (training), or a ZeRO-3 partitioned weight: the module call, whose hooks gather it
        if h.numel() // h.shape[-1] > 64 or hasattr(self.lm_head.weight, "ds_id"):
            return self.lm_head(h)
        return project(h, self.lm_head.weight)  # drafting: == self.lm_head(h), faster for few rows
