"""Export a trained drafter to a serving-engine layout:
``python train/export.py drafter=outputs/eagle3/drafter format=speculators output_dir=outputs/export/speculators``.

Formats (``selfspec.heads.formats``): speculators | sglang (EAGLE-3), medusa, eagle1, transformers (draft
model). The config is ``conf/export.yaml`` (schema ``ExportJobConf``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from selfspec.config import CONFIG_PATH
from selfspec.utils import exit_on_user_error, setup_logging

logger = logging.getLogger("selfspec.train.export")


@dataclass
class ExportJobConf:
    drafter: str = MISSING  # a selfspec drafter folder (or hub id)
    format: str = MISSING  # speculators | sglang | medusa | eagle1 | transformers
    output_dir: str = MISSING
    target_name_or_path: str = ""  # default: the target recorded in the drafter folder
    verifier: str = ""  # the model id the engine loads as verifier (default: derived from the target)
    speculative_tokens: int = 3
    include_embeddings: bool = True


def register_export(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    cs.store(name="export_schema", node=ExportJobConf)


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_logging()
    from selfspec.heads.format_export import export

    with exit_on_user_error(logger):
        out = export(
            cfg.drafter,
            cfg.format,
            cfg.output_dir,
            target_name_or_path=cfg.target_name_or_path,
            verifier=cfg.verifier,
            speculative_tokens=int(cfg.speculative_tokens),
            include_embeddings=bool(cfg.include_embeddings),
        )
    logger.info("exported to %s", out)


if __name__ == "__main__":
    register_export()
    main()
