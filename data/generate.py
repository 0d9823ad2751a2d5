"""The target writes its own training set: ``python data/generate.py target=tiny_random output_dir=D``.

Builds (or reuses, or resumes) the cached dataset, then leaves ``D/dataset`` (opened by
``datasets.load_from_disk``), ``D/meta.json`` and ``D/config.yaml``. Under torchrun every rank generates its
own shards. See ``selfspec.data`` for the layout.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from selfspec.config import CONFIG_PATH, save_resolved, strip_launcher_args
from selfspec.data.builder import build_dataset, load_splits, publish
from selfspec.data.config import register_data
from selfspec.utils import exit_on_user_error, is_rank_zero, setup_logging

logger = logging.getLogger("selfspec.data")


@hydra.main(config_path=CONFIG_PATH, config_name="generate", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_logging()
    with exit_on_user_error(logger):
        path = build_dataset(cfg)
    if is_rank_zero():
        save_resolved(cfg, f"{cfg.output_dir}/config.yaml")
        link = publish(path, cfg.output_dir)
        splits = load_splits(link)
        logger.info(
            "dataset ready: %s -> %s (%s)", link, path, ", ".join(f"{k}: {len(v)}" for k, v in splits.items())
        )


if __name__ == "__main__":
    register_data()
    strip_launcher_args()
    main()
