"""Drafter modules: Medusa, EAGLE, EAGLE-3, DFlash and a distilled draft model, their registry and folders.

Contract (see /work/BRIEF.md): every drafter is a ``Drafter`` with a family ``config`` dataclass,
``feature_layers()`` (indices into the target's ``hidden_states``) and ``bind(target)``.
"""

from selfspec.heads.base import Drafter, TargetDims
from selfspec.heads.dflash import DFlash, DFlashConfig
from selfspec.heads.draft_model import DraftModel, DraftModelConfig, LoraConf
from selfspec.heads.eagle import Eagle, EagleConfig
from selfspec.heads.eagle3 import Eagle3, Eagle3Config, aux_layer_ids_for, default_aux_layers
from selfspec.heads.features import TargetOutput, target_forward
from selfspec.heads.folder import detect_format, load_drafter, read_metadata, save_drafter
from selfspec.heads.medusa import Medusa, MedusaConfig
from selfspec.heads.registry import CONFIGS, DRAFTERS, build_drafter, make_config
from selfspec.heads.vocab import DraftVocab, build_vocab_map, validate_vocab_map

__all__ = [
    "CONFIGS",
    "DFlash",
    "DFlashConfig",
    "DRAFTERS",
    "DraftModel",
    "DraftModelConfig",
    "DraftVocab",
    "Drafter",
    "Eagle",
    "Eagle3",
    "Eagle3Config",
    "EagleConfig",
    "LoraConf",
    "Medusa",
    "MedusaConfig",
    "TargetDims",
    "TargetOutput",
    "aux_layer_ids_for",
    "build_drafter",
    "build_vocab_map",
    "default_aux_layers",
    "detect_format",
    "load_drafter",
    "make_config",
    "read_metadata",
    "save_drafter",
    "target_forward",
    "validate_vocab_map",
]
