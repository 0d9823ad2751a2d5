"""Serving-engine formats: export selfspec drafters to the layouts engines load, and import published ones.

Formats (one name each, see ``FORMATS``):

- ``speculators`` (vLLM, ``vllm-project/speculators``): EAGLE-3 as ``Eagle3Speculator``; the draft layer's
  LlamaConfig under ``transformer_layer_config``; weights ``layers.0.*``, ``fc``, ``norm``, ``lm_head``,
  ``d2t``, ``t2d``, ``embed_tokens``. Aux ids = inputs of decoder layers = selfspec's hidden_states indices.
  DFlash as ``DFlashSpeculator`` (``speculators_model_type: dflash``, heads/format_dflash.py).
- ``sglang`` (``LlamaForCausalLMEagle3``, SpecForge / SafeAILab EAGLE-3): a flat LlamaConfig with
  ``draft_vocab_size`` and ``eagle_config``; weights ``midlayer.*``, ``fc``, ``norm``, ``lm_head``, ``d2t``,
  ``t2d``. SGLang captures layer ``id + 1`` for a configured id, so ids are written one lower; when the aux layers
  are EAGLE-3's default (2, L//2, L-3), no ids are written, so every engine (SGLang, vLLM, economize) picks the
  same default states.
- ``medusa`` (FasterDecoding/Medusa, read by vLLM and economize): ``medusa_lm_head.safetensors`` with
  ``{k}.{j}.linear.{weight,bias}`` (block j of head k) and ``{k}.{num_layers}.weight`` (head k's output layer;
  the target's lm_head is materialised per head when selfspec shares it).
- ``eagle1`` (SafeAILab EAGLE-1/2): ``fc`` (2H -> H, bias) over concat(embedding, feature), ``layers.0.*``
  without an input norm, ``embed_tokens``; config.json is the layer's LlamaConfig with one layer.
- ``transformers``: a distilled draft model, already a plain transformers folder (copied).

This module holds what both directions share (names, layer configs, checks, detection); heads/format_export.py
writes the layouts and heads/format_import.py reads them. Every export also writes ``selfspec_export.json`` (the
target's name, depth and tokenizer fingerprint) that engines ignore and ``import_drafter`` uses; ``load_drafter``
reads all four layouts through ``detect`` and ``read_external``. Both directions validate: an inconsistent drafter
is refused with one SelfspecError line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from selfspec.heads.base import Drafter
from selfspec.heads.eagle3 import Eagle3
from selfspec.heads.folder import CONFIG, resolve_drafter_path
from selfspec.heads.vocab import validate_vocab_map
from selfspec.utils import SelfspecError

FORMATS = ("speculators", "sglang", "medusa", "eagle1", "transformers")
SIDECAR = "selfspec_export.json"
MEDUSA_WEIGHTS = "medusa_lm_head.safetensors"
WEIGHTS = "model.safetensors"
_LAYER_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "max_position_embeddings",
    "attention_bias",
    "mlp_bias",
    "rope_parameters",
    "vocab_size",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


# ---------------------------------------------------------------------------------------------------------
# Shared helpers.


def verifier_name(target_name: str) -> str:
    """What an engine should load as the target: a built-in target's local folder, else the name as given.

    The embedded target is the dequantised GGUF, not the hub's original weights, so its folder is the model the
    drafter was trained against; pass ``verifier=<hub id>`` to export for publishing instead.
    """
    from selfspec.target import EMBEDDED_TARGET, TINY_TARGET, resolve_target_path

    if target_name in (EMBEDDED_TARGET, TINY_TARGET):
        return resolve_target_path(target_name)
    return target_name


def layer_config(drafter: Drafter) -> dict[str, Any]:
    """The draft layer's LlamaConfig-like dict (one layer, the target's sizes and rope) from the drafter config."""
    tc = dict(drafter.config.target_config)
    out = {k: tc[k] for k in _LAYER_KEYS if k in tc}
    out["num_hidden_layers"] = 1
    out["tie_word_embeddings"] = False
    out["architectures"] = ["LlamaForCausalLM"]
    rope = tc.get("rope_parameters") or {}
    out["rope_theta"] = float(rope.get("rope_theta", tc.get("rope_theta", 10000.0)))
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    return out


def target_config_from(layer: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """A selfspec ``target_config`` rebuilt from an engine's layer config (rope_theta -> rope_parameters)."""
    tc = {k: layer[k] for k in _LAYER_KEYS if k in layer}
    tc.setdefault("model_type", "llama")
    if "rope_parameters" not in tc:
        rope = dict(layer.get("rope_scaling") or {"rope_type": "default"})
        rope["rope_theta"] = float(layer.get("rope_theta", 10000.0))
        tc["rope_parameters"] = rope
    tc["num_hidden_layers"] = num_layers
    return tc


def write_config(folder: Path, cfg: dict[str, Any]) -> None:
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
        for k, v in state.items()
    }


# ---------------------------------------------------------------------------------------------------------
# Checks (export and import).


def check_eagle3(
    drafter: Eagle3, num_target_layers: int | None = None, target: nn.Module | None = None
) -> None:
    """d2t/t2d consistent with each other and the vocab; sizes; aux ids within the target's depth."""
    c = drafter.config
    h, v = c.hidden_size, c.vocab_size
    if drafter.fc.weight.shape != (h, 3 * h):
        raise SelfspecError(f"eagle3 fc is {tuple(drafter.fc.weight.shape)}, expected ({h}, {3 * h})")
    if drafter.lm_head.weight.shape[0] != drafter.d2t.numel():
        raise SelfspecError(
            f"eagle3 lm_head has {drafter.lm_head.weight.shape[0]} rows but d2t "
            f"{drafter.d2t.numel()} draft tokens: wrong draft_vocab_size"
        )
    if target is not None:
        tv = int(target.get_output_embeddings().weight.shape[0])
        th = int(target.config.hidden_size)
        if (tv, th) != (v, h):
            raise SelfspecError(
                f"eagle3 drafter has vocab {v}, hidden {h} but the target has vocab {tv}, "
                f"hidden {th}: wrong target or wrong vocab size"
            )
        num_target_layers = int(target.config.num_hidden_layers)
    validate_vocab_map(drafter.d2t, drafter.t2d, v)
    depth = num_target_layers or c.num_target_layers
    aux = list(c.aux_layers)
    if len(aux) != 3 or (depth and not all(0 <= i <= depth for i in aux)):
        raise SelfspecError(
            f"eagle3 aux layers {aux} are not 3 hidden_states indices within the target's depth [0, {depth}]"
        )


def load_strict(drafter: Drafter, state: dict[str, torch.Tensor], folder: Path) -> Drafter:
    """Load ``state`` into ``drafter`` strictly; a mismatch is one SelfspecError line naming the keys."""
    try:
        missing, unexpected = drafter.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise SelfspecError(
            f"{folder}: weights do not fit the config ({str(e).splitlines()[-1].strip()})"
        ) from e
    if missing or unexpected:
        raise SelfspecError(
            f"{folder}: weights do not fit the config (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return drafter


def engine_default_aux(num_layers: int) -> list[int] | None:
    """The states vLLM, SGLang and economize all capture when a config names no ids (None if they disagree)."""
    ids = [2, num_layers // 2, num_layers - 3]
    return ids if ids == sorted(set(ids)) and ids[0] < ids[1] else None


def check_target_named(name: str) -> None:
    if not name:
        raise SelfspecError(
            "the export names no target: pass target_name_or_path= (the model it was trained for)"
        )


# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# Detection.


def weight_keys(folder: Path, name: str) -> list[str]:
    path = folder / name
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def detect(folder: Path, cfg: dict[str, Any]) -> str | None:
    """The external format of a folder's config.json (None: not one of ours)."""
    if cfg.get("speculators_model_type") in ("eagle3", "dflash"):
        return "speculators"
    if "draft_vocab_size" in cfg or any("eagle3" in str(a).lower() for a in cfg.get("architectures") or []):
        return "sglang"
    if "medusa_num_heads" in cfg:
        return "medusa"
    keys = weight_keys(folder, WEIGHTS)
    if "fc.weight" in keys and "fc.bias" in keys and any(k.startswith("layers.0.") for k in keys):
        return "eagle1"
    return None


def read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    return json.loads(path.read_text()).get("target", {}) if path.is_file() else {}


def target_name_of(path_or_hub_id: str | Path) -> str:
    """The target a drafter folder (any format) names: selfspec metadata, the export sidecar, the speculators
    verifier, or ``base_model_name_or_path``; "" when it names none."""
    folder = resolve_drafter_path(path_or_hub_id)
    cfg = json.loads((folder / CONFIG).read_text())
    verifier = (cfg.get("speculators_config") or {}).get("verifier") or {}
    for name in (
        (cfg.get("selfspec") or {}).get("target", {}).get("name_or_path"),
        read_sidecar(folder).get("name_or_path"),
        verifier.get("name_or_path"),
        cfg.get("base_model_name_or_path"),
    ):
        if name:
            return str(name)
    return ""
