"""Schema of the ``data`` group and of the ``generate`` job (``python data/generate.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from selfspec.config import JobConf, register_core


@dataclass
class DataConf:
    source: str = "self"  # self | jsonl | parquet | hub
    num_prompts: int = 64
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    eval_fraction: float = 0.1


@dataclass
class GenerateJobConf(JobConf):
    data: DataConf = field(default_factory=DataConf)


def register_data(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    register_core(cs)
    cs.store(group="data", name="schema", node=DataConf)
    cs.store(name="generate_schema", node=GenerateJobConf)
