"""DFlash in the ``speculators`` layout (vLLM's ``method: dflash``, speculators' ``DFlashDraftModel``): export,
import and the checks both directions share.

config.json: ``speculators_model_type: dflash``, ``block_size``, ``aux_hidden_state_layer_ids`` (inputs of decoder
layers = selfspec's hidden_states indices, as for EAGLE-3), ``mask_token_id``, ``draft_vocab_size`` and the draft
layers' Qwen3Config under ``transformer_layer_config`` (the target's sizes, ``num_hidden_layers`` = draft layers,
full attention). ``sample_from_anchor`` is false: the anchor is the pending token and block positions 1..K-1 are
the drafts, as selfspec trains them. Weights keep selfspec's names (heads/dflash.py) plus ``embed_tokens`` (the
target's, which speculators also reloads from the verifier); ``d2t``/``t2d`` only for a reduced vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from selfspec.heads.checks import check_family
from selfspec.heads.dflash import DFlash, DFlashConfig
from selfspec.heads.formats import (
    WEIGHTS,
    contiguous,
    layer_config,
    load_strict,
    target_config_from,
    write_config,
)
from selfspec.heads.vocab import validate_vocab_map
from selfspec.utils import SelfspecError

_ENGINE_ONLY = ("embed_tokens.weight", "verifier_norm.weight", "verifier_lm_head.weight")


def check_dflash(drafter: DFlash, target: nn.Module | None = None) -> None:
    """Sizes, vocab maps, block size, mask token and aux ids within the target's depth; one line if not."""
    c = drafter.config
    h, v = c.hidden_size, c.vocab_size
    n = len(c.aux_layers)
    if drafter.fc.weight.shape != (h, n * h):
        raise SelfspecError(
            f"dflash fc is {tuple(drafter.fc.weight.shape)}, expected ({h}, {n * h}) for {n} aux layers"
        )
    if drafter.lm_head.weight.shape[0] != drafter.d2t.numel():
        raise SelfspecError(
            f"dflash lm_head has {drafter.lm_head.weight.shape[0]} rows but d2t {drafter.d2t.numel()} draft "
            "tokens: wrong draft_vocab_size"
        )
    depth = c.num_target_layers
    if target is not None:
        tv, th = int(target.get_output_embeddings().weight.shape[0]), int(target.config.hidden_size)
        if (tv, th) != (v, h):
            raise SelfspecError(
                f"dflash drafter has vocab {v}, hidden {h} but the target has vocab {tv}, hidden {th}: wrong target"
            )
        depth = int(target.config.num_hidden_layers)
    validate_vocab_map(drafter.d2t, drafter.t2d, v)
    if not n or (depth and not all(0 <= i <= depth for i in c.aux_layers)):
        raise SelfspecError(
            f"dflash aux layers {list(c.aux_layers)} are not hidden_states indices within the target's depth "
            f"[0, {depth}]"
        )
    if c.block_size < 2 or not 0 <= c.mask_token_id < v:
        raise SelfspecError(
            f"dflash block_size {c.block_size} / mask_token_id {c.mask_token_id} invalid: need block_size >= 2 "
            f"and a mask token in [0, {v})"
        )


def dflash_layer_config(drafter: DFlash) -> dict[str, Any]:
    """The draft layers' Qwen3Config dict: the target's sizes and rope, ``num_layers`` full-attention layers."""
    c = drafter.config
    out = layer_config(drafter)
    heads = int(out["num_attention_heads"])
    n = c.num_layers
    out.update(
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        num_hidden_layers=n,
        head_dim=int(out.get("head_dim") or c.hidden_size // heads),
        use_sliding_window=False,
        sliding_window=None,
        layer_types=["full_attention"] * n,
        max_window_layers=n,
    )
    return out


def write_speculators(drafter: DFlash, out: Path, verifier: str, embed: bool) -> None:
    c = drafter.config
    cfg = {
        "architectures": ["DFlashSpeculator"],
        "speculators_model_type": "dflash",
        "speculators_version": "0.9.0",
        "transformer_layer_config": dflash_layer_config(drafter),
        "draft_vocab_size": drafter.draft_vocab_size,
        "block_size": c.block_size,
        "target_hidden_size": c.hidden_size,
        "aux_hidden_state_layer_ids": list(c.aux_layers),  # vLLM: input of layer id = hidden_states[id]
        "mask_token_id": c.mask_token_id,
        "sliding_window_non_causal": False,
        "sample_from_anchor": False,
        "speculators_config": {
            "algorithm": "dflash",
            "proposal_methods": [
                {"proposal_type": "greedy", "speculative_tokens": c.block_size - 1, "verifier_accept_k": 1}
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
    state = dict(drafter.state_dict())
    if drafter.draft_vocab_size >= c.vocab_size:  # full vocabulary: engines expect no maps
        state.pop("d2t"), state.pop("t2d")
    if embed and drafter.is_bound:
        state["embed_tokens.weight"] = drafter.embed_tokens.weight
    save_file(contiguous(state), str(out / WEIGHTS), metadata={"format": "pt"})


def read_speculators(
    folder: Path, cfg: dict[str, Any], side: dict[str, Any], target: nn.Module | None
) -> DFlash:
    """A DFlash drafter (unbound) from a speculators ``dflash`` folder; refused in one line when it is not one."""
    state = load_file(str(folder / WEIGHTS))
    check_family(state.keys(), "dflash", folder)
    layer = dict(cfg["transformer_layer_config"])
    if cfg.get("sample_from_anchor"):
        raise SelfspecError(
            f"{folder}: sample_from_anchor=true (DSpark-style blocks) is not supported by selfspec"
        )
    if any(t != "full_attention" for t in layer.get("layer_types") or []):
        raise SelfspecError(f"{folder}: sliding-window draft layers are not supported by selfspec")
    depth = int(side.get("num_layers") or 0)
    aux = cfg.get("aux_hidden_state_layer_ids")
    if aux is None:  # speculators' default ids
        if not depth:
            raise SelfspecError(
                f"{folder} names no aux layer ids and its target depth is unknown: import it with target="
            )
        aux = [2, depth // 2, depth - 3]
    if cfg.get("mask_token_id") is None:
        raise SelfspecError(f"{folder} names no mask_token_id: a DFlash drafter cannot draft without it")
    config = DFlashConfig(
        block_size=int(cfg.get("block_size", 8)),
        num_layers=int(layer.get("num_hidden_layers", 1)),
        aux_layers=[int(i) for i in aux],
        draft_vocab_size=int(cfg.get("draft_vocab_size", layer["vocab_size"])),
        mask_token_id=int(cfg["mask_token_id"]),
    )
    _fill(config, layer, side, cfg)
    drafter = DFlash(config)
    for key in _ENGINE_ONLY:
        state.pop(key, None)
    if "d2t" not in state:  # full vocabulary
        state["d2t"], state["t2d"] = drafter.d2t.clone(), drafter.t2d.clone()
    if (
        "lm_head.weight" not in state
    ):  # a full-vocabulary export leaves the (frozen) target head to the engine
        if target is None:
            raise SelfspecError(f"{folder} stores no lm_head (full vocabulary): import it with target=")
        state["lm_head.weight"] = target.get_output_embeddings().weight.detach().float().cpu()
    state["t2d"] = state["t2d"].bool()
    load_strict(drafter, state, folder)
    check_dflash(drafter)
    return drafter


def _fill(config: DFlashConfig, layer: dict[str, Any], side: dict[str, Any], cfg: dict[str, Any]) -> None:
    verifier = (cfg.get("speculators_config") or {}).get("verifier") or {}
    config.hidden_size = int(layer["hidden_size"])
    config.vocab_size = int(layer["vocab_size"])
    config.num_target_layers = int(side.get("num_layers") or 0)
    config.target_architecture = side.get("architecture") or (verifier.get("architectures") or [""])[0]
    config.target_config = target_config_from(layer, config.num_target_layers or 1)
