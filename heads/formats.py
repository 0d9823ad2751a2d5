"""Serving-engine formats: export selfspec drafters to the layouts engines load, and import published ones.

Formats (one name each, see ``FORMATS``):

- ``speculators`` (vLLM, ``vllm-project/speculators``): EAGLE-3 as ``Eagle3Speculator``; the draft layer's
  LlamaConfig under ``transformer_layer_config``; weights ``layers.0.*``, ``fc``, ``norm``, ``lm_head``,
  ``d2t``, ``t2d``, ``embed_tokens``. Aux ids = inputs of decoder layers = selfspec's hidden_states indices.
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

Every export also writes ``selfspec_export.json`` (the target's name, depth and tokenizer fingerprint) that engines
ignore and ``import_drafter`` uses. ``load_drafter`` reads all four
layouts through ``detect`` and ``read_external``. Both directions validate: an inconsistent drafter is refused with one SelfspecError line.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from selfspec.heads.base import Drafter
from selfspec.heads.draft_model import DraftModel
from selfspec.heads.eagle import Eagle, EagleConfig
from selfspec.heads.eagle3 import Eagle3, Eagle3Config, validate_vocab_map
from selfspec.heads.folder import CONFIG, load_drafter, read_metadata, resolve_drafter_path
from selfspec.heads.medusa import Medusa, MedusaConfig
from selfspec.utils import SelfspecError, atomic_dir

logger = logging.getLogger(__name__)

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


def _write_config(folder: Path, cfg: dict[str, Any]) -> None:
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _contig(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
# Export.


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
    if not isinstance(drafter, cls):
        raise SelfspecError(
            f"format {format!r} holds {cls.drafter_type} drafters, not {drafter.drafter_type}"
        )
    if isinstance(drafter, Eagle3):
        check_eagle3(drafter, target=target)
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
    return _contig(state)


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
    _write_config(out, cfg)
    save_file(_eagle3_state(drafter, "layers.0.", embed), str(out / WEIGHTS), metadata={"format": "pt"})


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
    _write_config(out, cfg)
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
    _write_config(out, cfg)
    save_file(_contig(state), str(out / MEDUSA_WEIGHTS), metadata={"format": "pt"})


def _eagle1(drafter: Eagle, out: Path, verifier: str, tokens: int, embed: bool) -> None:
    if drafter.config.input_norm:
        raise SelfspecError(
            "EAGLE-1 layers have no input norm: this drafter (input_norm=true) cannot be exported as eagle1"
        )
    state = {
        ("layers.0." + k[len("layer.") :] if k.startswith("layer.") else k): t
        for k, t in drafter.state_dict().items()
    }
    if embed:
        state["embed_tokens.weight"] = _target_part(drafter, "embed_tokens")
    cfg = layer_config(drafter)
    cfg.update(bias=True, base_model_name_or_path=verifier)
    _write_config(out, cfg)
    save_file(_contig(state), str(out / WEIGHTS), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------------
# Import.


def _weight_keys(folder: Path, name: str) -> list[str]:
    path = folder / name
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def detect(folder: Path, cfg: dict[str, Any]) -> str | None:
    """The external format of a folder's config.json (None: not one of ours)."""
    if cfg.get("speculators_model_type") == "eagle3":
        return "speculators"
    if "draft_vocab_size" in cfg or any("eagle3" in str(a).lower() for a in cfg.get("architectures") or []):
        return "sglang"
    if "medusa_num_heads" in cfg:
        return "medusa"
    keys = _weight_keys(folder, WEIGHTS)
    if "fc.weight" in keys and "fc.bias" in keys and any(k.startswith("layers.0.") for k in keys):
        return "eagle1"
    return None


def _sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    return json.loads(path.read_text()).get("target", {}) if path.is_file() else {}


def _fill(config: Any, layer: dict[str, Any], side: dict[str, Any], arch: str = "") -> Any:
    config.hidden_size = int(layer["hidden_size"])
    config.vocab_size = int(layer["vocab_size"])
    config.num_target_layers = int(side.get("num_layers") or 0)
    config.target_architecture = side.get("architecture") or arch
    config.target_config = target_config_from(layer, config.num_target_layers or 1)
    return config


def _load_strict(drafter: Drafter, state: dict[str, torch.Tensor], folder: Path) -> Drafter:
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
    _load_strict(drafter, state, folder)
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
    return _load_strict(Medusa(config), ours, folder)


def _read_eagle1(folder: Path, cfg: dict[str, Any], side: dict[str, Any]) -> Eagle:
    config = _fill(EagleConfig(input_norm=False), cfg, side)
    state = load_file(str(folder / WEIGHTS))
    state.pop("embed_tokens.weight", None)
    state = {
        ("layer." + k[len("layers.0.") :] if k.startswith("layers.0.") else k): t for k, t in state.items()
    }
    return _load_strict(Eagle(config), state, folder)


def read_external(folder: Path, cfg: dict[str, Any], target: nn.Module | None = None) -> Drafter:
    """Build the selfspec drafter of an external folder (unbound). ``target`` only supplies what the folder may
    not say: the target's depth and architecture (the engines' default aux layers depend on the depth)."""
    side = dict(_sidecar(folder))
    if target is not None:
        side["num_layers"] = int(target.config.num_hidden_layers)
        side["architecture"] = (getattr(target.config, "architectures", None) or [type(target).__name__])[0]
    fmt = detect(folder, cfg)
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
        if isinstance(drafter, Eagle3) and target is not None:
            check_eagle3(drafter, target=target)
        return drafter
    drafter = read_external(folder, cfg, target)
    return drafter.eval() if target is None else bind_checked(drafter, target, tokenizer, folder)


def bind_checked(drafter: Drafter, target: nn.Module, tokenizer: Any, folder: Path) -> Drafter:
    """Check an imported drafter against ``target`` (one clear error), then bind it on the target's device."""
    from selfspec.heads.checks import check_target

    check_target(drafter, target, tokenizer, {"target": _sidecar(folder)}, folder)
    if isinstance(drafter, Eagle3):
        check_eagle3(drafter, target=target)
    weight = target.get_output_embeddings().weight
    return drafter.to(device=weight.device, dtype=weight.dtype).bind(target).eval()


def target_name_of(path_or_hub_id: str | Path) -> str:
    """The target a drafter folder (any format) names: selfspec metadata, the export sidecar, the speculators
    verifier, or ``base_model_name_or_path``; "" when it names none."""
    folder = resolve_drafter_path(path_or_hub_id)
    cfg = json.loads((folder / CONFIG).read_text())
    verifier = (cfg.get("speculators_config") or {}).get("verifier") or {}
    for name in (
        (cfg.get("selfspec") or {}).get("target", {}).get("name_or_path"),
        _sidecar(folder).get("name_or_path"),
        verifier.get("name_or_path"),
        cfg.get("base_model_name_or_path"),
    ):
        if name:
            return str(name)
    return ""
