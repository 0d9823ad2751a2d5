"""Distribution applied from outside, in one place: process group, DeepSpeed config and engine.

The drafter is written for one device; ``parallelize`` wraps it in a DeepSpeed engine (ZeRO 0..3, AdamW,
warmup + cosine, gradient accumulation, clipping, bf16 on GPU / fp32 on CPU). The frozen target never enters
the engine: it is not partitioned, not in the optimizer, and every rank keeps a full copy.

One process without a launcher works (a single-rank gloo group is created here); ``torchrun`` and the
``deepspeed`` launcher set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* and are used as they are.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join (or create) the default process group; return ``(rank, world_size)``.

    Without a launcher this creates a single-rank group on a free local port, so the same code path
    (DeepSpeed, DistributedSampler, all-reduce of metrics) serves one process and many.
    """
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ["MASTER_PORT"] = str(_free_port())
        os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def destroy_distributed() -> None:
    """Leave the default process group, dropping DeepSpeed's cached groups with it, so that a later
    ``init_distributed`` in the same process (a notebook, a test session) starts from a clean slate."""
    if not dist.is_initialized():
        return
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None and ds_comm.cdb is not None and ds_comm.cdb.is_initialized():
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` becomes this rank's ``cuda:LOCAL_RANK``; the CPU stays the CPU."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def use_bf16(ds_cfg: Any, device: torch.device) -> bool:
    precision = str(ds_cfg.precision)
    if precision not in ("auto", "bf16", "fp32"):
        raise SelfspecError(f"deepspeed.precision={precision!r}: use auto, bf16 or fp32")
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def deepspeed_config(train: Any, ds_cfg: Any, world_size: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config, built from the ``train`` and ``deepspeed`` groups."""
    stage = int(ds_cfg.zero_stage)
    if stage not in (0, 1, 2, 3):
        raise SelfspecError(f"deepspeed.zero_stage={stage}: use 0, 1, 2 or 3")
    zero: dict[str, Any] = {"stage": stage}
    if ds_cfg.offload_optimizer and stage >= 2:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    mbs, ga = int(train.micro_batch_size), int(train.grad_accum)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": ga,
        "train_batch_size": mbs * ga * world_size,
        "gradient_clipping": float(train.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": bool(bf16)},
        "steps_per_print": 10**9,  # our own logging
        "wall_clock_breakdown": False,
    }
    if ds_cfg.offload_optimizer:  # ZeRO-Offload needs DeepSpeed's own CPU Adam
        cfg["optimizer"] = {"type": "AdamW", "params": _adamw_params(train)}
    return cfg


def _adamw_params(train: Any) -> dict[str, Any]:
    return {"lr": float(train.lr), "betas": list(train.betas), "weight_decay": float(train.weight_decay)}


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _skip_cpu_shm_op(device: torch.device) -> None:
    """On the CPU DeepSpeed JIT-compiles a shared-memory all-reduce op at start-up (minutes on a small box).

    gloo does the same job for the few small all-reduces a drafter needs, so the op is marked unavailable.
    """
    if device.type != "cpu":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def parallelize(module: nn.Module, cfg: Any, device: torch.device, world_size: int) -> Any:
    """Wrap ``module`` (the trainable drafter objective) in a DeepSpeed engine; return the engine.

    A plain torch AdamW (fused on CUDA) is passed in rather than DeepSpeed's FusedAdam, which would need a
    JIT-compiled op on the CPU; ZeRO shards its state all the same.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    _skip_cpu_shm_op(device)
    import deepspeed

    bf16 = use_bf16(cfg.deepspeed, device)
    ds_config = deepspeed_config(cfg.train, cfg.deepspeed, world_size, bf16)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise SelfspecError("the drafter has no trainable parameters: check the head config")
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(params, **_adamw_params(cfg.train), fused=device.type == "cuda")
    factor = warmup_cosine(
        int(cfg.train.warmup_steps), int(cfg.train.max_steps), float(cfg.train.min_lr_ratio)
    )

    def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        model_parameters=params if optimizer is None else None,
        lr_scheduler=scheduler,
        config=ds_config,
    )
    logger.info(
        "deepspeed: ZeRO-%d, %s, %d rank(s), %d trainable parameters",
        int(cfg.deepspeed.zero_stage),
        "bf16" if bf16 else "fp32",
        world_size,
        sum(getattr(p, "ds_numel", p.numel()) for p in params),
    )
    return engine


def gathered_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full weights of the engine's module, gathered from ZeRO-3 shards; only rank 0 gets them (others None).

    Every rank must call this (the gather is collective).
    """
    module = engine.module
    if int(engine.zero_optimization_stage()) == 3:
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = (
                {k: v.detach().clone().cpu() for k, v in module.state_dict().items()} if _rank0() else None
            )
        return state
    return {k: v.detach().cpu() for k, v in module.state_dict().items()} if _rank0() else None


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
