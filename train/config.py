"""Schemas of the training job (``python train/run.py``) and of its groups: head, train, deepspeed, logger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from selfspec.config import JobConf
from selfspec.data.config import DataConf, register_data
from selfspec.heads import DFlashConfig, DraftModelConfig, Eagle3Config, EagleConfig, MedusaConfig

# The head group's schemas are the drafter families' own config dataclasses (selfspec.heads): user-facing
# hyper-parameters plus target-derived sizes that build_drafter fills from the target.
MedusaHeadConf = MedusaConfig
EagleHeadConf = EagleConfig
Eagle3HeadConf = Eagle3Config
DraftModelHeadConf = DraftModelConfig
DFlashHeadConf = DFlashConfig


@dataclass
class LossConf:
    """Loss weights and options per family (see selfspec.train.losses)."""

    medusa_soft: bool = True  # CE to the target's distribution (self-distillation); false: to its argmax
    head_decay: float = 0.8  # Medusa head k weighs head_decay**k (Medusa-2's lambda_k)
    feature_weight: float = 1.0  # EAGLE: smooth L1 feature regression
    feature_noise: float = 0.0  # EAGLE, EAGLE-3: uniform noise of this width on the input features (EAGLE-1)
    ce_weight: float = 0.1  # EAGLE: CE to the target distribution (EAGLE's 0.1 p-loss)
    ttt_decay: float = 0.8  # EAGLE-3: TTT step j weighs ttt_decay**j
    divergence: str = "forward_kl"  # draft model: forward_kl | reverse_kl | jsd
    dflash_anchors: int = 64  # DFlash: random anchor positions (blocks) per sequence and step
    dflash_gamma: float = (
        4.0  # DFlash: block position i weighs exp(-(i-1)/gamma) (the method: 4 for blocks of 8)
    )
    temperature: float = 1.0  # softens target and drafter distributions alike


@dataclass
class TrainConf:
    """The training loop: budget, optimiser, schedule, evaluation, checkpoints, export."""

    max_steps: int = 100  # optimiser steps (each = micro_batch_size * grad_accum * world sequences)
    epochs: float = 0.0  # > 0: max_steps is sized to this many passes over the train split instead
    train_rows: int = 0  # > 0: train on the first N conversations of the train split only (scaling curves)
    micro_batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 512  # longer conversations are truncated (prompt first, so the response tail goes)
    group_by_length: bool = True  # micro batches of similar lengths: less padding
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    warmup_ratio: float = 0.0  # > 0: warmup_steps = warmup_ratio * max_steps
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 50  # 0: only at the end
    eval_batches: int = 8  # micro batches of the eval split per rank and evaluation (0: all)
    save_every: int = 100  # 0: no intermediate checkpoints
    keep_last: int = 2
    resume: str = "auto"  # auto: continue from output_dir/checkpoints if any | never
    # A drafter folder of the same family and sizes whose weights (and draft vocabulary) start this run: more
    # training on new data. A checkpoint in output_dir (resume=auto) still takes precedence.
    init_from: str | None = None
    push_to_hub: str | None = None  # a hub repo id: publish output_dir/drafter there at the end
    report: bool = True  # end with decode/bench's acceptance report on the eval split
    report_prompts: int = 8
    report_max_new_tokens: int = 64
    features: str = (
        "auto"  # online | offline | auto (offline when the data is read >= 1.5 times and fits on disk)
    )
    compute_dtype: str = (
        "auto"  # auto | bf16 | fp32: the drafter's forward under bf16 autocast (fp32 weights)
    )
    loss: LossConf = field(default_factory=LossConf)


@dataclass
class DeepSpeedConf:
    """How DeepSpeed runs the drafter (the target stays outside the engine)."""

    zero_stage: int = 0  # 0..3
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU | bf16 | fp32
    offload_optimizer: bool = False  # ZeRO-2/3 optimiser state on the CPU (needs DeepSpeed's CPU Adam op)


@dataclass
class LoggerConf:
    type: str = "none"  # none | wandb
    project: str | None = None  # default: $WANDB_PROJECT, else "selfspec"
    run_name: str | None = None  # default: the output folder's name
    init_timeout: float = 30.0  # seconds; wandb must never hang the job


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
    "dflash": DFlashHeadConf,
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
