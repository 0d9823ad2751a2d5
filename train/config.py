"""Schemas of the training job (``python train/run.py``) and of its groups: head, train, deepspeed, logger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from selfspec.config import JobConf
from selfspec.data.config import DataConf, register_data


@dataclass
class MedusaHeadConf:
    type: str = "medusa"
    num_heads: int = 4
    num_layers: int = 1
    own_lm_head: bool = False


@dataclass
class EagleHeadConf:
    type: str = "eagle"


@dataclass
class Eagle3HeadConf:
    type: str = "eagle3"
    ttt_steps: int = 7
    draft_vocab_size: int = 32000


@dataclass
class DraftModelHeadConf:
    type: str = "draft_model"
    num_layers: int = 4


@dataclass
class TrainConf:
    max_steps: int = 100
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 10


@dataclass
class DeepSpeedConf:
    zero_stage: int = 0


@dataclass
class LoggerConf:
    type: str = "none"  # none | wandb


@dataclass
class TrainJobConf(JobConf):
    data: DataConf = field(default_factory=DataConf)
    head: Any = MISSING
    train: TrainConf = field(default_factory=TrainConf)
    deepspeed: DeepSpeedConf = field(default_factory=DeepSpeedConf)
    logger: LoggerConf = field(default_factory=LoggerConf)


HEAD_SCHEMAS: dict[str, type] = {
    "medusa": MedusaHeadConf,
    "eagle": EagleHeadConf,
    "eagle3": Eagle3HeadConf,
    "draft_model": DraftModelHeadConf,
}


def register_train(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    register_data(cs)
    for name, node in HEAD_SCHEMAS.items():
        cs.store(group="head", name=f"{name}_schema", node=node)
    cs.store(group="train", name="schema", node=TrainConf)
    cs.store(group="deepspeed", name="schema", node=DeepSpeedConf)
    cs.store(group="logger", name="schema", node=LoggerConf)
    cs.store(name="train_schema", node=TrainJobConf)
