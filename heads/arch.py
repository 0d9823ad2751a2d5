"""The target's architecture, rebuilt from its config alone: decoder layer, rotary embedding, norm, masks.

EAGLE drafters use one decoder layer *of the target's architecture*. A drafter folder stores the target's
config dict, so ``load_drafter(path)`` rebuilds the same layer without loading the target. Llama-family
models (Llama, Mistral, Qwen2, ...) expose ``<Name>DecoderLayer``, ``<Name>RotaryEmbedding`` and
``<Name>RMSNorm`` in ``transformers.models.<type>.modeling_<type>``.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from selfspec.utils import SelfspecError

# Keys of the target config that do not describe the architecture (kept out of drafter folders).
_DROP_KEYS = (
    "_name_or_path",
    "transformers_version",
    "architectures",
    "torch_dtype",
    "dtype",
    "id2label",
    "label2id",
)


def target_config_dict(config: PretrainedConfig) -> dict[str, Any]:
    """The target's config as a JSON-able dict (what a drafter stores to rebuild its layer)."""
    d = json.loads(config.to_json_string(use_diff=False))  # JSON-normalised, so a saved copy compares equal
    for k in _DROP_KEYS:
        d.pop(k, None)
    return d


def arch_config(target_config: dict[str, Any], attn_implementation: str = "sdpa") -> PretrainedConfig:
    """Rebuild a transformers config from the stored dict, with sdpa attention (4D bool masks work)."""
    d = dict(target_config)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise SelfspecError("drafter config has no target_config.model_type: re-export it with selfspec")
    try:
        cfg = AutoConfig.for_model(model_type, **d)
    except ValueError as e:
        raise SelfspecError(f"unknown target architecture {model_type!r} in drafter config ({e})") from e
    cfg._attn_implementation = attn_implementation
    return cfg


def arch_classes(cfg: PretrainedConfig) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """(DecoderLayer, RotaryEmbedding, RMSNorm) classes of ``cfg.model_type``."""
    model_type = cfg.model_type
    try:
        mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except ImportError as e:
        raise SelfspecError(f"transformers has no modeling file for target type {model_type!r}") from e

    def find(suffix: str) -> type[nn.Module]:
        names = [n for n in dir(mod) if n.endswith(suffix) and isinstance(getattr(mod, n), type)]
        if not names:
            raise SelfspecError(
                f"target type {model_type!r} has no {suffix} class: EAGLE drafters support Llama-family targets"
            )
        return getattr(mod, sorted(names, key=len)[0])

    return find("DecoderLayer"), find("RotaryEmbedding"), find("RMSNorm")


def causal_bool_mask(
    attention_mask: torch.Tensor | None, past_len: int, q_len: int, device: torch.device
) -> torch.Tensor | None:
    """A 4D bool mask (B|1, 1, q_len, past_len + q_len), True = attend; passes a given 4D mask through.

    Without a cache and without a mask, returns None: sdpa's own causal path is exact and faster then.
    """
    if attention_mask is not None:
        if attention_mask.dim() != 4:
            raise ValueError(
                "drafter attention_mask must be None or a 4D bool mask (B, 1, T, S), True = attend"
            )
        return attention_mask if attention_mask.dtype == torch.bool else attention_mask >= 0
    if past_len == 0:
        return None
    q = torch.arange(q_len, device=device).unsqueeze(1) + past_len
    k = torch.arange(past_len + q_len, device=device).unsqueeze(0)
    return (k <= q)[None, None]  # (1, 1, q_len, S)


def cache_len(past_key_values: Any, layer_idx: int = 0) -> int:
    return 0 if past_key_values is None else int(past_key_values.get_seq_length(layer_idx))
