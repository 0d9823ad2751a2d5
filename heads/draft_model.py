"""Distilled draft model: a small causal LM with the target's tokenizer (Leviathan et al., 2023, "Fast
Inference from Transformers via Speculative Decoding", arXiv:2211.17192; trained by distillation as in
DistillSpec, arXiv:2310.08461).

Initialised from the target (its embeddings, first ``num_layers`` decoder layers, final norm and lm_head, in
the same config class with ``num_hidden_layers`` reduced) or from ``init_from`` (a model id or folder sharing
the target's tokenizer). Optional LoRA through peft (``lora.r > 0``): only the adapters train; export merges
them, so the saved folder is a plain transformers model that ``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from selfspec.heads.base import Drafter, TargetDims


@dataclass
class LoraConf:
    r: int = 0  # 0: no LoRA, the whole draft model trains
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class DraftModelConfig(TargetDims):
    """User-facing: ``num_layers`` (layers kept from the target), ``init_from`` (empty: the target; else a
    model id/folder), ``lora``. Target-derived: sizes and ``target_config`` (the draft's own transformers
    config dict once built)."""

    type: str = "draft_model"
    num_layers: int = 4
    init_from: str = ""
    lora: LoraConf = field(default_factory=LoraConf)


class DraftModel(Drafter):
    """Wraps a transformers causal LM (``self.model``); ``forward`` returns its logits only."""

    drafter_type = "draft_model"

    def __init__(self, config: DraftModelConfig, model: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        if model is None:  # rebuilt from a saved config (load_drafter fills the weights)
            model = AutoModelForCausalLM.from_config(_draft_config(config.target_config, config.num_layers))
        self.model: nn.Module = model
        if config.lora.r > 0:
            self.model = _apply_lora(model, config.lora)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V). Masks and caches as for the target (2D or 4D bool)."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        return out.logits

    def bind(self, target: nn.Module) -> DraftModel:
        """A draft model owns all its weights; binding only remembers the target parts for callers."""
        return super().bind(target)

    def export_model(self) -> PreTrainedModel:
        """A plain transformers model with LoRA merged (a copy when LoRA is on; the live model otherwise)."""
        if self.config.lora.r > 0:
            return copy.deepcopy(self.model).merge_and_unload()
        return self.model

    @classmethod
    def from_target(cls, config: DraftModelConfig, target: PreTrainedModel) -> DraftModel:
        """Build from the target's first ``num_layers`` layers, or from ``config.init_from``."""
        if config.init_from:
            model = AutoModelForCausalLM.from_pretrained(config.init_from, dtype=target.dtype)
        else:
            model = truncate_target(target, config.num_layers)
        return cls(config, model.to(target.device))


def _draft_config(config_dict: dict[str, Any], num_layers: int) -> Any:
    d = dict(config_dict)
    model_type = d.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **d)
    cfg.num_hidden_layers = num_layers
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[:num_layers]
    return cfg


@torch.no_grad()
def truncate_target(target: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """A copy of the target with only its first ``num_layers`` decoder layers (same config class)."""
    cfg = _draft_config(target.config.to_dict(), min(num_layers, target.config.num_hidden_layers))
    cfg._attn_implementation = target.config._attn_implementation
    draft = AutoModelForCausalLM.from_config(cfg, dtype=target.dtype)
    src = target.state_dict()
    missing, unexpected = draft.load_state_dict(
        {k: v for k, v in src.items() if k in draft.state_dict()}, strict=False
    )
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not cfg.tie_word_embeddings]
    if missing:
        raise RuntimeError(f"truncating the target left weights uninitialised: {missing[:5]}")
    draft.tie_weights()
    draft.generation_config = copy.deepcopy(target.generation_config)
    return draft.eval().requires_grad_(True)


def _apply_lora(model: PreTrainedModel, lora: LoraConf) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    return get_peft_model(model, cfg)
