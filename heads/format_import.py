"""Import published drafters (the serving-engine layouts of heads/formats.py) as selfspec drafters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from selfspec.heads.base import Drafter
from selfspec.heads.dflash import DFlash
from selfspec.heads.eagle import Eagle, EagleConfig
from selfspec.heads.eagle3 import Eagle3, Eagle3Config
from selfspec.heads.folder import CONFIG, load_drafter, resolve_drafter_path
from selfspec.heads.format_dflash import check_dflash
from selfspec.heads.format_dflash import read_speculators as read_speculators_dflash
from selfspec.heads.formats import (
    FORMATS,
    MEDUSA_WEIGHTS,
    WEIGHTS,
    check_eagle3,
    detect,
    load_strict,
    read_sidecar,
    target_config_from,
)
from selfspec.heads.medusa import Medusa, MedusaConfig
from selfspec.utils import SelfspecError


def _fill(config: Any, layer: dict[str, Any], side: dict[str, Any], arch: str = "") -> Any:
    config.hidden_size = int(layer["hidden_size"])
    config.vocab_size = int(layer["vocab_size"])
    config.num_target_layers = int(side.get("num_layers") or 0)
    config.target_architecture = side.get("architecture") or arch
    config.target_config = target_config_from(layer, config.num_target_layers or 1)
    return config


def _read_eagle3(folder: Path, cfg: dict[str, Any], fmt: str, side: dict[str, Any]) -> Eagle3:
    if fmt == "speculators":
        layer = {**cfg["transformer_layer_config"]}
        aux = cfg.get("eagle_aux_hidden_state_layer_ids")
        verifier = (cfg.get("speculators_config") or {}).get("verifier") or {}
        arch = (verifier.get("architectures") or [""])[0]
        if (
            cfg.get("norm_before_residual")
            or cfg.get("norm_before_fc")
            or cfg.get("fc_norm")
            or cfg.get("norm_output")
        ):
            raise SelfspecError(
                f"{folder}: EAGLE-3 variants with norm_before_residual/norm_before_fc/fc_norm/"
                "norm_output are not supported by selfspec"
            )
    else:
        layer, arch = cfg, ""
        ids = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        aux = (
            None if ids is None else [i + 1 for i in ids]
        )  # SGLang's ids name outputs: hidden_states[id + 1]
    config = _fill(Eagle3Config(draft_vocab_size=int(cfg["draft_vocab_size"])), layer, side, arch)
    if aux is None:
        depth = config.num_target_layers
        if not depth:
            raise SelfspecError(
                f"{folder} names no aux layer ids and its target depth is unknown: import it with "
                "target= so the engines' default (2, L//2, L-3) can be used"
            )
        aux = [2, depth // 2, depth - 3]
    config.aux_layers = [int(i) for i in aux]
    state = load_file(str(folder / WEIGHTS))
    state.pop("embed_tokens.weight", None)
    state = {
        ("midlayer." + k[len("layers.0.") :] if k.startswith("layers.0.") else k): t for k, t in state.items()
    }
    drafter = Eagle3(config)
    if "d2t" not in state:  # full vocabulary
        state["d2t"], state["t2d"] = drafter.d2t.clone(), drafter.t2d.clone()
    if state["d2t"].numel() != drafter.d2t.numel() or state["t2d"].numel() != drafter.t2d.numel():
        raise SelfspecError(
            f"{folder}: d2t has {state['d2t'].numel()} entries and t2d {state['t2d'].numel()}, but "
            f"config.json says draft_vocab_size {drafter.d2t.numel()}, vocab_size "
            f"{drafter.t2d.numel()}: wrong vocab size"
        )
    state["t2d"] = state["t2d"].bool()
    load_strict(drafter, state, folder)
    check_eagle3(drafter)
    return drafter


def _read_medusa(folder: Path, cfg: dict[str, Any], side: dict[str, Any]) -> Medusa:
    state = load_file(str(folder / MEDUSA_WEIGHTS))
    state = {k.removeprefix("medusa_head."): t for k, t in state.items()}
    k_heads, n = int(cfg["medusa_num_heads"]), int(cfg.get("medusa_num_layers", 1))
    w0 = state.get(f"0.{n}.weight")
    if w0 is None:
        raise SelfspecError(
            f"{folder}: no '0.{n}.weight' for {n} blocks per head: config and weights disagree"
        )
    v, h = w0.shape
    if cfg.get("vocab_size", v) != v or cfg.get("hidden_size", h) != h:
        raise SelfspecError(
            f"{folder}: output layers are ({v}, {h}) but config.json says vocab_size "
            f"{cfg.get('vocab_size')}, hidden_size {cfg.get('hidden_size')}: wrong vocab size"
        )
    config = MedusaConfig(num_heads=k_heads, num_layers=n, own_lm_head=True)
    _fill(config, {"hidden_size": h, "vocab_size": v, "model_type": "llama"}, side)
    config.target_config = {}
    ours = {}
    for key, t in state.items():
        head, idx, leaf = key.split(".", 2)
        if int(idx) == n and leaf == "weight":
            continue
        ours[f"heads.{head}.{idx}.{leaf}"] = t
    ours["lm_head"] = torch.stack([state[f"{k}.{n}.weight"] for k in range(k_heads)])
    return load_strict(Medusa(config), ours, folder)


def _read_eagle1(folder: Path, cfg: dict[str, Any], side: dict[str, Any]) -> Eagle:
    config = _fill(EagleConfig(input_norm=False), cfg, side)
    state = load_file(str(folder / WEIGHTS))
    state.pop("embed_tokens.weight", None)
    state = {
        ("layer." + k[len("layers.0.") :] if k.startswith("layers.0.") else k): t for k, t in state.items()
    }
    return load_strict(Eagle(config), state, folder)


def read_external(folder: Path, cfg: dict[str, Any], target: nn.Module | None = None) -> Drafter:
    """Build the selfspec drafter of an external folder (unbound). ``target`` only supplies what the folder may
    not say: the target's depth and architecture (the engines' default aux layers depend on the depth)."""
    side = dict(read_sidecar(folder))
    if target is not None:
        side["num_layers"] = int(target.config.num_hidden_layers)
        side["architecture"] = (getattr(target.config, "architectures", None) or [type(target).__name__])[0]
    fmt = detect(folder, cfg)
    if fmt == "speculators" and cfg.get("speculators_model_type") == "dflash":
        return read_speculators_dflash(folder, cfg, side, target)
    if fmt in ("speculators", "sglang"):
        return _read_eagle3(folder, cfg, fmt, side)
    if fmt == "medusa":
        return _read_medusa(folder, cfg, side)
    if fmt == "eagle1":
        return _read_eagle1(folder, cfg, side)
    raise SelfspecError(f"{folder} is in no format selfspec reads ({', '.join(FORMATS)})")


def import_drafter(
    path_or_hub_id: str | Path, target: nn.Module | None = None, tokenizer: Any = None
) -> Drafter:
    """A selfspec drafter from a folder or hub id in any format (selfspec's own included), checked against and
    bound to ``target`` when given: vocab and hidden sizes, architecture, d2t/t2d, aux ids within its depth."""
    folder = resolve_drafter_path(path_or_hub_id)
    cfg = json.loads((folder / CONFIG).read_text())
    if isinstance(cfg.get("selfspec"), dict):
        drafter = load_drafter(folder, target=target, tokenizer=tokenizer)
        if target is not None:
            _check_engine_family(drafter, target)
        return drafter
    drafter = read_external(folder, cfg, target)
    return drafter.eval() if target is None else bind_checked(drafter, target, tokenizer, folder)


def bind_checked(drafter: Drafter, target: nn.Module, tokenizer: Any, folder: Path) -> Drafter:
    """Check an imported drafter against ``target`` (one clear error), then bind it on the target's device."""
    from selfspec.heads.checks import check_target

    check_target(drafter, target, tokenizer, {"target": read_sidecar(folder)}, folder)
    _check_engine_family(drafter, target)
    weight = target.get_output_embeddings().weight
    return drafter.to(device=weight.device, dtype=weight.dtype).bind(target).eval()


def _check_engine_family(drafter: Drafter, target: nn.Module) -> None:
    """The format checks of the families engines read with aux layers (sizes, vocab maps, depth)."""
    if isinstance(drafter, Eagle3):
        check_eagle3(drafter, target=target)
    if isinstance(drafter, DFlash):
        check_dflash(drafter, target=target)
