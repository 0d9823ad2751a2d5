"""Decisions a training job makes from its data before it starts: schedule length, feature mode, vocabulary.

Each is logged with the numbers behind it, and each has a warning where the data cannot support what was asked
(a dataset read many times over, a draft vocabulary larger than the tokens the data holds).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from selfspec.data.features import build_features, estimate_bytes, features_root, find_features
from selfspec.heads.dflash import DFlashConfig
from selfspec.heads.dflash import default_aux_layers as dflash_layers
from selfspec.heads.eagle3 import default_aux_layers as eagle3_layers
from selfspec.train.parallel import barrier
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

_MANY_EPOCHS = 20  # beyond this a drafter mostly memorises: more data helps more than more steps


def size_schedule(cfg: DictConfig, n_train: int, world: int) -> float:
    """Resolve ``train.max_steps`` from ``train.epochs`` and ``warmup_steps`` from ``warmup_ratio``, in place.

    Returns the number of passes over the train split the schedule makes.
    """
    t = cfg.train
    rows_per_step = int(t.micro_batch_size) * int(t.grad_accum) * world
    with open_dict(cfg):
        if float(t.epochs) > 0:
            t.max_steps = max(1, math.ceil(float(t.epochs) * n_train / rows_per_step))
        if float(t.warmup_ratio) > 0:
            t.warmup_steps = max(1, round(float(t.warmup_ratio) * int(t.max_steps)))
    epochs = int(t.max_steps) * rows_per_step / max(1, n_train)
    logger.info(
        "schedule: %d steps x %d conversations = %.1f epochs of %d; warmup %d steps",
        int(t.max_steps), rows_per_step, epochs, n_train, int(t.warmup_steps),
    )  # fmt: skip
    if epochs > _MANY_EPOCHS:
        logger.warning(
            "the train split holds only %d conversations: %d steps read it %.0f times over; more data "
            "(data.num_prompts) will help more than more steps",
            n_train, int(t.max_steps), epochs,
        )  # fmt: skip
    return epochs


def feature_layers(drafter: Any, num_layers: int) -> list[int]:
    """The layers to store offline: the drafter's, the final state (for the logits), EAGLE-3's defaults and
    DFlash's default spread, so one stored set serves every family trained on the same dataset with its defaults
    (``make reproduce`` builds it once; on SmolLM2 the union is 5 states instead of 4)."""
    shared = set(eagle3_layers(num_layers)) | set(dflash_layers(num_layers, DFlashConfig.num_layers))
    return sorted(set(drafter.feature_layers()) | {num_layers} | shared)


def prepare_features(
    cfg: DictConfig, target: Any, dataset: Path, splits: Any, drafter: Any, epochs: float, rank: int
) -> Any:
    """The stored features for offline training, or None for online; ``train.features=auto`` decides by
    how often the data is read and whether it fits on disk, and says why."""
    mode = str(cfg.train.features)
    if mode not in ("auto", "online", "offline"):
        raise SelfspecError(f"train.features={mode!r}: use auto, online or offline")
    if mode == "online":
        return None
    num_layers = int(target.config.get_text_config().num_hidden_layers)
    layers = feature_layers(drafter, num_layers)
    found = find_features(dataset, target, layers)
    if found is not None:
        logger.info("features: offline, reusing %s", found.folder)
        return found
    tokens = sum(sum(len(r) for r in s["input_ids"]) for s in splits.values())
    need = estimate_bytes(tokens, len(layers), int(target.config.get_text_config().hidden_size), target.dtype)
    root = features_root(dataset)
    free = shutil.disk_usage(root.parent).free
    if need > free // 2:
        if mode == "offline":
            raise SelfspecError(
                f"offline features need {need / 2**30:.1f} GiB but {root.parent} has {free / 2**30:.1f} GiB "
                "free: free space, or use train.features=online"
            )
        logger.warning(
            "features: online (stored features would take %.1f GiB of the %.1f GiB free)",
            need / 2**30, free / 2**30,
        )  # fmt: skip
        return None
    if mode == "auto" and epochs < 1.5:
        logger.info("features: online (the data is read %.1f times: storing it would not pay)", epochs)
        return None
    logger.info(
        "features: offline (%d tokens x %d layers = %.2f GiB in %s; the data is read %.1f times)",
        tokens, len(layers), need / 2**30, root, epochs,
    )  # fmt: skip
    if rank == 0:
        build_features(dataset, splits, target, str(cfg.target.name_or_path), layers)
    barrier()
    return find_features(dataset, target, layers)


def vocab_coverage(drafter: Any, counts: torch.Tensor, eval_split: Any, max_len: int) -> dict[str, float]:
    """How much of the answers a reduced draft vocabulary can draft at all: on the train tokens it was chosen
    from, and on the eval split's (a token outside it is never drafted, so it caps acceptance)."""
    from selfspec.train.batches import token_counts

    in_vocab = drafter.t2d.cpu()
    out = {"vocab/draft_size": float(in_vocab.sum()), "vocab/train_distinct": float((counts > 0).sum())}
    out["vocab/train_coverage"] = float(counts[in_vocab].sum() / counts.sum().clamp(min=1))
    if len(eval_split):
        ev = token_counts(eval_split, counts.numel(), max_len)
        out["vocab/eval_coverage"] = float(ev[in_vocab].sum() / ev.sum().clamp(min=1))
    logger.info(
        "draft vocabulary: %d tokens cover %.1f%% of the train answers, %.1f%% of the eval answers",
        int(out["vocab/draft_size"]), 100 * out["vocab/train_coverage"],
        100 * out.get("vocab/eval_coverage", float("nan")),
    )  # fmt: skip
    if out["vocab/draft_size"] > out["vocab/train_distinct"]:
        logger.warning(
            "draft_vocab_size=%d but the training answers hold only %d distinct tokens: the rest of the draft "
            "vocabulary is filled by id order and never trained",
            int(out["vocab/draft_size"]), int(out["vocab/train_distinct"]),
        )  # fmt: skip
    return out
