"""Drafter registry: name -> class and config, and ``build_drafter`` that sizes a drafter from its target."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from selfspec.heads.arch import target_config_dict
from selfspec.heads.base import Drafter
from selfspec.heads.dflash import DFlash, DFlashConfig, fill_defaults
from selfspec.heads.draft_model import DraftModel, DraftModelConfig
from selfspec.heads.eagle import Eagle, EagleConfig
from selfspec.heads.eagle3 import Eagle3, Eagle3Config, default_aux_layers
from selfspec.heads.medusa import Medusa, MedusaConfig
from selfspec.heads.vocab import DraftVocab, build_vocab_map
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

DRAFTERS: dict[str, type[Drafter]] = {
    "medusa": Medusa,
    "eagle": Eagle,
    "eagle3": Eagle3,
    "draft_model": DraftModel,
    "dflash": DFlash,
}
CONFIGS: dict[str, type] = {
    "medusa": MedusaConfig,
    "eagle": EagleConfig,
    "eagle3": Eagle3Config,
    "draft_model": DraftModelConfig,
    "dflash": DFlashConfig,
}


def drafter_class(drafter_type: str) -> type[Drafter]:
    if drafter_type not in DRAFTERS:
        raise SelfspecError(f"unknown drafter type {drafter_type!r}: choose one of {', '.join(DRAFTERS)}")
    return DRAFTERS[drafter_type]


def _plain(obj: Any) -> Any:
    """DictConfig/ListConfig (or any Mapping/Sequence) -> plain dicts and lists, without importing omegaconf."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [_plain(v) for v in obj]
    return obj


def config_from_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """Build a (possibly nested) config dataclass from a mapping; an unknown key is a clear error."""
    values = _plain(values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SelfspecError(f"unknown {cls.__name__} key(s) {unknown}: valid keys are {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if callable(fields[name].default_factory) else None
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = config_from_dict(type(default), value)
        kwargs[name] = value
    return cls(**kwargs)


def make_config(head_cfg: Mapping[str, Any]) -> Any:
    """The family config dataclass for ``head_cfg`` (which must name its ``type``)."""
    values = _plain(head_cfg)
    drafter_type = values.get("type")
    if drafter_type is None:
        raise SelfspecError("head config has no 'type': set head=medusa|eagle|eagle3|draft_model|dflash")
    drafter_class(drafter_type)  # clear error for an unknown type
    return config_from_dict(CONFIGS[drafter_type], values)


def fill_target_dims(config: Any, target: nn.Module) -> Any:
    """Copy the target's sizes and architecture into the config (the fields of ``TargetDims``)."""
    tcfg = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    config.hidden_size = int(tcfg.hidden_size)
    config.vocab_size = int(target.get_output_embeddings().weight.shape[0])
    config.num_target_layers = int(tcfg.num_hidden_layers)
    config.target_architecture = (getattr(target.config, "architectures", None) or [type(target).__name__])[0]
    config.target_config = target_config_dict(tcfg)
    return config


def build_drafter(
    head_cfg: Mapping[str, Any],
    target: nn.Module,
    token_counts: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> Drafter:
    """A fresh drafter for ``target``, bound to it, on its device, initialised from it where the family says
    so. ``token_counts`` (V,) sets a reduced draft vocabulary (EAGLE, EAGLE-3, DFlash) to the most frequent
    tokens (without it, the first Vd ids: only sensible when Vd >= V), and DFlash's mask token. ``dtype``: the
    drafter's weights (default: the target's; training keeps fp32 master weights on CPU)."""
    config = fill_target_dims(make_config(head_cfg), target)
    device = target.get_output_embeddings().weight.device
    dtype = dtype or target.get_output_embeddings().weight.dtype
    if isinstance(config, Eagle3Config):
        if not config.aux_layers:
            config.aux_layers = default_aux_layers(config.num_target_layers)
        _check_layers(config.aux_layers, config.num_target_layers)
    if isinstance(config, DFlashConfig):
        fill_defaults(config, token_counts, _special_ids(target))
        _check_layers(config.aux_layers, config.num_target_layers, "dflash", None)
    if isinstance(config, DraftModelConfig):
        drafter: Drafter = DraftModel.from_target(config, target)
    else:
        drafter = DRAFTERS[config.type](config)
    drafter.to(device=device, dtype=dtype).bind(target)
    if isinstance(drafter, (DraftVocab, Eagle)) and drafter.draft_vocab_size < config.vocab_size:
        if token_counts is not None:
            drafter.set_vocab_map(
                *build_vocab_map(token_counts, drafter.draft_vocab_size, _special_ids(target))
            )
        else:
            logger.warning(
                "%s: no token counts given; the draft vocabulary is the first %d ids",
                drafter.drafter_type,
                drafter.draft_vocab_size,
            )
    if isinstance(drafter, (DraftVocab, Medusa)):  # own lm_head rows (and norm, fc) start from the target's
        drafter.init_from_target()
    return drafter


def _special_ids(target: nn.Module) -> list[int]:
    """EOS / pad ids of the target: they must be draftable whatever their frequency."""
    ids: list[int] = []
    for cfg in (target.config, getattr(target, "generation_config", None)):
        for key in ("eos_token_id", "pad_token_id"):
            val = getattr(cfg, key, None) if cfg is not None else None
            ids += [val] if isinstance(val, int) else list(val or [])
    return sorted({i for i in ids if i is not None and i >= 0})


def _check_layers(layers: list[int], num_layers: int, family: str = "eagle3", count: int | None = 3) -> None:
    bad = [i for i in layers if not 0 <= i <= num_layers]
    if bad or not layers or (count is not None and len(layers) != count):
        what = f"{count} hidden_states indices" if count else "hidden_states indices"
        raise SelfspecError(
            f"{family} aux_layers {layers} must be {what} in [0, {num_layers}] for this target"
        )
