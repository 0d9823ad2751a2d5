"""Train a drafter against a frozen target: ``python train/run.py +experiment=medusa``.

compose config -> seed -> load target -> build/load the dataset -> build drafter -> train -> export -> report.
Hydra composes ``conf/config.yaml`` with the command line; the run folder (``output_dir``) receives the resolved
config, checkpoints, the exported drafter and the acceptance report. Under the deepspeed launcher the extra
``--local_rank=N`` argument is moved to LOCAL_RANK. A user error ends with one line and exit code 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from selfspec.config import CONFIG_PATH, save_resolved, strip_launcher_args
from selfspec.data import build_dataset, load_splits
from selfspec.heads import build_drafter
from selfspec.heads.checks import check_target
from selfspec.heads.folder import load_drafter, read_metadata
from selfspec.heads.registry import drafter_class
from selfspec.target import load_target, tokenizer_fingerprint
from selfspec.train.batches import token_counts
from selfspec.train.config import register_train
from selfspec.train.exporter import add_measured_acceptance, export_drafter, push_to_hub
from selfspec.train.loop import Trainer
from selfspec.train.parallel import init_distributed, local_device, use_bf16
from selfspec.train.plan import prepare_features, size_schedule, vocab_coverage
from selfspec.train.tracking import make_tracker
from selfspec.utils import SelfspecError, exit_on_user_error, resolve_device, seed_everything, setup_logging

logger = logging.getLogger("selfspec.train")


@dataclass
class TrainResult:
    folder: Path  # the exported drafter
    drafter: Any  # the trained drafter module (bound to the target)
    metrics: dict[str, float]
    history: list[dict[str, float]]


def train_job(cfg: DictConfig) -> TrainResult:
    """The whole job, callable in-process (tests, benchmarks)."""
    drafter_class(str(cfg.head.type))  # an unknown drafter type fails before any model is loaded
    device = local_device(resolve_device(str(cfg.device)))
    rank, world = init_distributed(device)
    seed_everything(int(cfg.seed))  # the same on every rank: identical drafter init
    out = Path(cfg.output_dir)
    if rank == 0:
        save_resolved(cfg, out / "config.yaml")
    target, tokenizer = load_target(
        str(cfg.target.name_or_path),
        device=device,
        dtype=str(cfg.target.dtype),
        attn_implementation=str(cfg.target.attn_implementation),
    )
    dataset_dir = build_dataset(cfg, target, tokenizer)
    splits = load_splits(dataset_dir)
    rows = int(cfg.train.train_rows)
    if 0 < rows < len(splits["train"]):  # a prefix keeps row i = stored feature row i
        splits["train"] = splits["train"].select(range(rows))
    epochs = size_schedule(cfg, len(splits["train"]), world)
    counts = None
    if cfg.head.get("draft_vocab_size") is not None:  # the families with a reduced draft vocabulary
        vocab = int(target.get_output_embeddings().weight.shape[0])
        counts = token_counts(splits["train"], vocab, int(cfg.train.max_seq_len))
    seed_everything(int(cfg.seed))
    master = (
        torch.bfloat16 if use_bf16(cfg.deepspeed, device) else torch.float32
    )  # DeepSpeed keeps fp32 copies
    drafter = build_drafter(cfg.head, target, token_counts=counts, dtype=master)
    if cfg.train.init_from:
        init_weights(drafter, str(cfg.train.init_from), target, tokenizer)
    coverage = {}
    # a reduced draft vocabulary: how much of the data it covers
    if getattr(drafter, "t2d", None) is not None:
        coverage = vocab_coverage(drafter, counts, splits["eval"], int(cfg.train.max_seq_len))
    features = prepare_features(cfg, target, dataset_dir, splits, drafter, epochs, rank)
    tracker = make_tracker(cfg.logger, _plain(cfg), out, rank)
    trainer = Trainer(
        cfg, target, drafter, splits, int(tokenizer.pad_token_id), out, rank, world, device, tracker, features
    )
    metrics = {**trainer.fit(), **coverage}
    drafter.acceptance = trainer.acceptance_stats()
    summary = f"{len(splits['train'])} train / {len(splits['eval'])} eval conversations written by the target ({dataset_dir})"
    folder = export_drafter(
        trainer.engine, drafter, cfg, tokenizer_fingerprint(tokenizer), dataset_dir, summary, metrics
    )
    tracker.finish()
    if rank == 0 and cfg.train.report:  # before publishing: the model card gets the measured acceptance
        report = _report(cfg, target, tokenizer, folder, splits["eval"])
        if report is not None:
            add_measured_acceptance(folder, report)
    if rank == 0 and cfg.train.push_to_hub:
        push_to_hub(folder, str(cfg.train.push_to_hub))
    return TrainResult(folder, drafter, metrics, trainer.history)


def init_weights(drafter: Any, path: str, target: Any, tokenizer: Any) -> None:
    """``train.init_from``: copy a trained drafter's weights and buffers (its draft vocabulary too) into the fresh
    ``drafter``, which keeps its own dtype; the two must be of one family and one shape."""
    # unbound (no target given): its weights keep their stored dtype; the target is checked as load_drafter would
    init = load_drafter(path, expected_type=drafter.drafter_type)
    check_target(init, target, tokenizer, read_metadata(path), path)
    theirs, ours = init.state_dict(), drafter.state_dict()
    wrong = sorted(ours.keys() ^ theirs.keys())
    wrong += sorted(k for k in ours.keys() & theirs.keys() if ours[k].shape != theirs[k].shape)
    if wrong:
        raise SelfspecError(
            f"train.init_from={path}: its weights do not fit this {drafter.drafter_type} head ({', '.join(wrong[:4])}"
            f"{', ...' if len(wrong) > 4 else ''}); give a folder trained with the same head.* sizes"
        )
    drafter.load_state_dict(theirs)
    logger.info("train.init_from: weights and draft vocabulary from %s", path)


def _plain(cfg: DictConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _report(
    cfg: DictConfig, target: Any, tokenizer: Any, folder: Path, eval_split: Any
) -> dict[str, Any] | None:
    """End with decode/bench's acceptance report on the eval split; return it (None when the split is empty)."""
    from selfspec.decode.bench.report import print_table, run_report

    if len(eval_split) == 0:
        logger.info("the eval split is empty: skipping the acceptance report")
        return None
    report = run_report(
        target,
        tokenizer,
        str(folder),
        eval_split,
        Path(cfg.output_dir) / "report",
        max_new_tokens=int(cfg.train.report_max_new_tokens),
        num_prompts=int(cfg.train.report_prompts),
    )
    print_table(report)
    return report


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        with exit_on_user_error(logger):
            folder = train_job(cfg).folder
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    logger.info("done: %s", folder)


if __name__ == "__main__":
    register_train()
    strip_launcher_args()
    main()
