"""Benchmark a trained drafter: ``python decode/bench/run.py drafter=outputs/eagle/drafter max_new_tokens=128``.

Runs held-out prompts through the target alone, transformers' prompt lookup and assisted generation, and
selfspec's decoder; writes bench.json, bench.md and acceptance.png to ``output_dir`` and prints the table.
Options: conf/bench.yaml (``drafter=[P1,P2]`` compares several drafters in one run; ``prompts=FILE.jsonl``).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from selfspec.config import CONFIG_PATH
from selfspec.decode.bench.report import print_table, register_bench
from selfspec.decode.bench.setup import bench_from_config
from selfspec.utils import exit_on_user_error, setup_logging

logger = logging.getLogger("selfspec.decode.bench")


@hydra.main(config_path=CONFIG_PATH, config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    setup_logging()
    with exit_on_user_error(logger):
        report = bench_from_config(cfg)
    print_table(report)
    logger.info("wrote bench.json, bench.md and acceptance.png to %s", cfg.output_dir)


if __name__ == "__main__":
    register_bench()
    main()
