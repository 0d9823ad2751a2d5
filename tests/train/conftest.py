"""Helpers for the training tests: tiny-target job configs composed in-process, and the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Small enough for seconds per run on 2 CPU cores, long enough for every family's shifts (T > ttt_steps + 2).
TINY = [
    "target=tiny_random",
    "data.num_prompts=8",
    "data.max_new_tokens=24",
    "train.max_seq_len=160",
    "train.micro_batch_size=2",
    "train.report=false",
    "train.eval_batches=2",
    "train.log_every=1",
]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One dataset cache for the whole session: the tiny target writes its data once."""
    return str(tmp_path_factory.mktemp("datasets"))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from selfspec.train.config import register_train

    register_train()
    with initialize_config_module("selfspec.conf", version_base=None):
        return hydra_compose("config", overrides=overrides)


def run_cli(
    args: list[str],
    launcher: list[str] | None = None,
    timeout: int = 300,
    script: str = "run.py",
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python train/<script> *args`` (or under ``launcher``) in a process group of its own."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    env.update(extra_env or {})
    cmd = (launcher or [sys.executable]) + [str(REPO / "train" / script), *args]
    # On a timeout the launcher's worker ranks die with the group, not just torchrun.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
