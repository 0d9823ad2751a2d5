"""Train a drafter against a frozen target: ``python train/run.py +experiment=medusa``.

Hydra composes ``conf/config.yaml`` with the command line; the run folder (``output_dir``) receives the
resolved config. Under the deepspeed launcher the extra ``--local_rank=N`` argument is moved to LOCAL_RANK.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from selfspec.config import CONFIG_PATH, save_resolved, strip_launcher_args
from selfspec.train.config import register_train
from selfspec.utils import setup_logging

logger = logging.getLogger("selfspec.train")


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_logging()
    save_resolved(cfg, f"{cfg.output_dir}/config.yaml")
    logger.info("resolved config written to %s/config.yaml", cfg.output_dir)


if __name__ == "__main__":
    register_train()
    strip_launcher_args()
    main()
