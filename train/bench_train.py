"""Training benchmark on the embedded target: ``python train/bench_train.py [steps] [quick_steps]``.

Prints, per drafter family, training tokens/s (target forward + drafter forward/backward, real tokens) and
head-1 (step-1) top-1 agreement with the target on the eval split, untrained vs after a fixed short CPU budget
(``steps`` optimiser steps for medusa and eagle3, ``quick_steps`` for eagle and draft).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from selfspec.data import build_dataset, load_splits  # noqa: E402
from selfspec.heads import build_drafter  # noqa: E402
from selfspec.target import load_target  # noqa: E402
from selfspec.train.batches import token_counts  # noqa: E402
from selfspec.train.loop import Trainer  # noqa: E402
from selfspec.train.parallel import init_distributed  # noqa: E402
from selfspec.utils import resolve_device, seed_everything  # noqa: E402

logger = logging.getLogger("selfspec.train.bench")

FAMILIES = {"medusa": "medusa", "eagle": "eagle", "eagle3": "eagle3", "draft_model": "draft"}


def _cfg(experiment: str, steps: int, out: str):
    from hydra import compose, initialize_config_module

    from selfspec.train.config import register_train

    register_train()
    overrides = [
        f"+experiment={experiment}",
        f"train.max_steps={steps}",
        "train.eval_every=0",
        "train.save_every=0",
        "train.eval_batches=0",
        "train.resume=never",
        "train.report=false",
        "train.warmup_steps=3",
        "train.log_every=5",
        "data.num_prompts=32",
        "data.max_new_tokens=48",
        f"output_dir={out}",
    ]
    with initialize_config_module("selfspec.conf", version_base=None):
        return compose("config", overrides=overrides)


def main(steps: int = 40, quick_steps: int = 6) -> None:
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device("cpu")
    rank, world = init_distributed(device)
    target, tokenizer = load_target("smollm2-135m-instruct", device="cpu", dtype="fp32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="selfspec-bench-") as tmp:
        splits = None
        for family, experiment in FAMILIES.items():
            n = steps if family in ("medusa", "eagle3") else quick_steps
            cfg = _cfg(experiment, n, f"{tmp}/{family}")
            if splits is None:
                splits = load_splits(build_dataset(cfg, target, tokenizer))
            counts = None
            if family == "eagle3":
                counts = token_counts(splits["train"], target.config.vocab_size, int(cfg.train.max_seq_len))
            seed_everything(0)
            drafter = build_drafter(cfg.head, target, token_counts=counts)
            trainer = Trainer(
                cfg,
                target,
                drafter,
                splits,
                int(tokenizer.pad_token_id),
                __import__("pathlib").Path(cfg.output_dir),
                rank,
                world,
                device,
            )
            label = trainer.label
            before = trainer.evaluate()[f"eval/top1_{label}1"]
            started = time.perf_counter()
            metrics = trainer.fit()
            rows.append(
                (
                    family,
                    n,
                    metrics["train/tokens_per_s"],
                    before,
                    metrics[f"eval/top1_{label}1"],
                    time.perf_counter() - started,
                )
            )
    print(
        f"\ntarget smollm2-135m-instruct, CPU threads {__import__('torch').get_num_threads()}, "
        f"{len(splits['train'])} train / {len(splits['eval'])} eval conversations"
    )
    print("| drafter | steps | train tokens/s | eval top-1 head/step 1: untrained | trained | train time s |")
    print("|---|---|---|---|---|---|")
    for family, n, tps, before, after, secs in rows:
        print(f"| {family} | {n} | {tps:.0f} | {before:.3f} | {after:.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
