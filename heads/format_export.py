"""Export selfspec drafters to the serving-engine layouts described in heads/formats.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from selfspec.heads.base import Drafter
from selfspec.heads.dflash import DFlash
from selfspec.heads.draft_model import DraftModel
from selfspec.heads.eagle import Eagle
from selfspec.heads.eagle3 import Eagle3
from selfspec.heads.folder import load_drafter, read_metadata, resolve_drafter_path
from selfspec.heads.format_dflash import check_dflash
from selfspec.heads.format_dflash import write_speculators as write_speculators_dflash
from selfspec.heads.formats import (
    FORMATS,
    MEDUSA_WEIGHTS,
    SIDECAR,
    WEIGHTS,
    check_eagle3,
    check_target_named,
    contiguous,
    engine_default_aux,
    layer_config,
    verifier_name,
    write_config,
)
from selfspec.heads.medusa import Medusa
from selfspec.utils import SelfspecError, atomic_dir

logger = logging.getLogger(__name__)


def export(
    drafter_or_path: Drafter | str | Path,
    format: str,  # noqa: A002 - the user-facing name
    output_dir: str | Path,
    target: nn.Module | None = None,
    target_name_or_path: str = "",
    verifier: str = "",
    speculative_tokens: int = 3,
    include_embeddings: bool = True,
) -> Path:
    """Write ``drafter_or_path`` (a Drafter or a selfspec folder) in ``format`` to ``output_dir`` (atomically).

    ``target`` is needed only to materialise target parts the format stores and selfspec shares (Medusa's shared
    lm_head, EAGLE embeddings) when the drafter is not bound. ``verifier``: the model id the engine should load
    (default: the hub id of the target the drafter was trained for).
    """
    if format not in FORMATS:
        raise SelfspecError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    drafter, meta = _resolve(drafter_or_path, target)
    tmeta = meta.get("target", {})
    name = target_name_or_path or tmeta.get("name_or_path", "")
    check_target_named(name)
    sidecar = {
        "target": {
            **tmeta,
            "name_or_path": name,
            "num_layers": drafter.config.num_target_layers,
            "architecture": drafter.config.target_architecture,
        },
        "drafter_type": drafter.drafter_type,
        "format": format,
    }
    verifier = verifier or verifier_name(name)
    writers = {
        "speculators": (Eagle3, _speculators),
        "sglang": (Eagle3, _sglang),
        "medusa": (Medusa, _medusa),
        "eagle1": (Eagle, _eagle1),
        "transformers": (DraftModel, None),
    }
    cls, writer = writers[format]
    if format == "speculators" and isinstance(drafter, DFlash):
        cls, writer = DFlash, _speculators_dflash
    if not isinstance(drafter, cls):
        held = f"{cls.drafter_type} or dflash" if format == "speculators" else cls.drafter_type
        raise SelfspecError(f"format {format!r} holds {held} drafters, not {drafter.drafter_type}")
    if isinstance(drafter, Eagle3):
        check_eagle3(drafter, target=target)
    if isinstance(drafter, DFlash):
        check_dflash(drafter, target=target)
    with atomic_dir(output_dir) as tmp:
        if writer is None:
            if not isinstance(drafter_or_path, (str, Path)):
                raise SelfspecError(
                    "export a draft_model from its saved folder (it is already a transformers folder)"
                )
            shutil.copytree(resolve_drafter_path(drafter_or_path), tmp, dirs_exist_ok=True)
        else:
            writer(drafter, tmp, verifier, speculative_tokens, include_embeddings)
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    logger.info(
        "exported %s drafter as %s to %s (engine target: %s)",
        drafter.drafter_type,
        format,
        output_dir,
        verifier,
    )
    return Path(output_dir)


def _eagle3_state(drafter: Eagle3, layer_prefix: str, include_embeddings: bool) -> dict[str, torch.Tensor]:
    state = {}
    for k, t in drafter.state_dict().items():
        state[layer_prefix + k[len("midlayer.") :] if k.startswith("midlayer.") else k] = t
    if drafter.draft_vocab_size >= drafter.config.vocab_size:  # full vocabulary: engines expect no maps
        state.pop("d2t"), state.pop("t2d")
    if include_embeddings and drafter.is_bound:
        state["embed_tokens.weight"] = drafter.embed_tokens.weight
    return contiguous(state)


def _speculators(drafter: Eagle3, out: Path, verifier: str, tokens: int, embed: bool) -> None:
    c = drafter.config
    layer = layer_config(drafter)
    cfg = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": "0.9.0",
        "transformer_layer_config": layer,
        "draft_vocab_size": drafter.draft_vocab_size,
        "norm_before_residual": False,
        "target_hidden_size": c.hidden_size,
        "eagle_aux_hidden_state_layer_ids": list(c.aux_layers),  # vLLM: input of layer id = hidden_states[id]
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [
                {"proposal_type": "greedy", "speculative_tokens": tokens, "verifier_accept_k": 1}
            ],
            "default_proposal_method": "greedy",
            "verifier": {
                "name_or_path": verifier,
                "architectures": [c.target_architecture or "LlamaForCausalLM"],
            },
        },
        "torch_dtype": "float32",
    }
    write_config(out, cfg)
    save_file(_eagle3_state(drafter, "layers.0.", embed), str(out / WEIGHTS), metadata={"format": "pt"})


def _speculators_dflash(drafter: DFlash, out: Path, verifier: str, tokens: int, embed: bool) -> None:
    write_speculators_dflash(drafter, out, verifier, embed)  # speculative tokens: block_size - 1


def _sglang(drafter: Eagle3, out: Path, verifier: str, tokens: int, embed: bool) -> None:
    c = drafter.config
    cfg = layer_config(drafter)
    cfg.update(
        architectures=["LlamaForCausalLMEagle3"],
        draft_vocab_size=drafter.draft_vocab_size,
        target_hidden_size=c.hidden_size,
        base_model_name_or_path=verifier,
    )
    eagle_cfg: dict[str, Any] = {"use_aux_hidden_state": True}
    if list(c.aux_layers) != engine_default_aux(c.num_target_layers):
        eagle_cfg["eagle_aux_hidden_state_layer_ids"] = [
            i - 1 for i in c.aux_layers
        ]  # SGLang captures id + 1
    cfg["eagle_config"] = eagle_cfg
    write_config(out, cfg)
    save_file(_eagle3_state(drafter, "midlayer.", embed), str(out / WEIGHTS), metadata={"format": "pt"})


def _target_part(drafter: Drafter, name: str) -> torch.Tensor:
    if not drafter.is_bound:
        raise SelfspecError(f"this format stores the target's {name}: pass target= or a bound drafter")
    return getattr(drafter, name).weight


def _medusa(drafter: Medusa, out: Path, verifier: str, tokens: int, embed: bool) -> None:
    c = drafter.config
    n = c.num_layers
    state = {}
    for k, head in enumerate(drafter.heads):
        for j, block in enumerate(head):
            state[f"{k}.{j}.linear.weight"] = block.linear.weight
            state[f"{k}.{j}.linear.bias"] = block.linear.bias
        # Own output layers, or the target's shared lm_head materialised per head (the format has no sharing).
        w = drafter.lm_head[k] if drafter.lm_head is not None else _target_part(drafter, "target_lm_head")
        state[f"{k}.{n}.weight"] = w.clone()
    cfg = {
        "architectures": ["MedusaModel"],
        "medusa_num_heads": c.num_heads,
        "medusa_num_layers": n,
        "base_model_name_or_path": verifier,
        "hidden_size": c.hidden_size,
        "vocab_size": c.vocab_size,
    }
    write_config(out, cfg)
    save_file(contiguous(state), str(out / MEDUSA_WEIGHTS), metadata={"format": "pt"})


def _eagle1(drafter: Eagle, out: Path, verifier: str, tokens: int, embed: bool) -> None:
    if drafter.config.input_norm:
        raise SelfspecError(
            "EAGLE-1 layers have no input norm: this drafter (input_norm=true) cannot be exported as eagle1"
        )
    if drafter.reduced:
        raise SelfspecError(
            "the EAGLE-1 layout drafts the whole vocabulary: this drafter (draft_vocab_size="
            f"{drafter.draft_vocab_size}) cannot be exported as eagle1; train with head.draft_vocab_size=0"
        )
    state = {
        ("layers.0." + k[len("layer.") :] if k.startswith("layer.") else k): t
        for k, t in drafter.state_dict().items()
    }
    if embed:
        state["embed_tokens.weight"] = _target_part(drafter, "embed_tokens")
    cfg = layer_config(drafter)
    cfg.update(bias=True, base_model_name_or_path=verifier)
    write_config(out, cfg)
    save_file(contiguous(state), str(out / WEIGHTS), metadata={"format": "pt"})


def _resolve(
    drafter_or_path: Drafter | str | Path, target: nn.Module | None
) -> tuple[Drafter, dict[str, Any]]:
    """(drafter, selfspec metadata) from a drafter module or a selfspec folder."""
    if isinstance(drafter_or_path, Drafter):
        return drafter_or_path, {}
    meta = read_metadata(drafter_or_path)
    tokenizer = None
    if target is None and meta.get("drafter_type") != "draft_model":
        # The formats store target parts selfspec shares (embeddings, Medusa's lm_head): load the target.
        from selfspec.target import load_target

        target, tokenizer = load_target(meta["target"]["name_or_path"], device="cpu", dtype="fp32")
    return load_drafter(drafter_or_path, target=target, tokenizer=tokenizer), meta
