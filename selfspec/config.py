"""Config schemas shared by every entry point, and the Hydra plumbing around them.

Each Hydra group under ``conf/`` is backed by a dataclass registered in Hydra's ConfigStore as
``<group>/schema`` (or ``<group>/<name>_schema``); a group YAML lists that schema first in its defaults, so a
misspelt key or a wrong type fails at start-up with Hydra's message naming the key. Groups are registered by
the package that owns them: the target here, ``data`` by ``selfspec.data.config``, ``train``/``deepspeed``/
``logger``/``head`` by ``selfspec.train.config``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from selfspec.target import EMBEDDED_TARGET
from selfspec.utils import atomic_write_text

# Hydra finds the config tree as package data, from a checkout (editable install) and from a wheel alike.
CONFIG_PATH = "pkg://selfspec.conf"


@dataclass
class TargetConf:
    """The frozen target: a built-in name (``smollm2-135m-instruct``, ``tiny-random``), a folder or a hub id."""

    name_or_path: str = EMBEDDED_TARGET
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: str = "sdpa"


@dataclass
class JobConf:
    """Keys every job has. ``device: auto`` picks CUDA when available, else the CPU."""

    output_dir: str = "outputs/run"
    seed: int = 0
    device: str = "auto"
    target: TargetConf = field(default_factory=TargetConf)


def register_core(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    cs.store(group="target", name="schema", node=TargetConf)


def conf_dir() -> Path:
    """The on-disk ``conf/`` folder of the installed package."""
    return Path(str(resources.files("selfspec.conf")))


def strip_launcher_args(argv: list[str] | None = None) -> None:
    """Move ``--local_rank=N`` (added by the deepspeed launcher) from argv to ``LOCAL_RANK``.

    Hydra would otherwise read it as an override and fail; every rank reads LOCAL_RANK from the environment.
    """
    argv = sys.argv if argv is None else argv
    kept = [argv[0]]
    it = iter(argv[1:])
    for arg in it:
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank"):
            os.environ.setdefault("LOCAL_RANK", next(it, "0"))
        else:
            kept.append(arg)
    argv[:] = kept


def save_resolved(cfg: DictConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically), e.g. into the run folder or a checkpoint."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
