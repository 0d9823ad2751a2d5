"""Fault injection: real SIGKILLs (and SIGSTOPs) at ``SELFSPEC_FAULT`` points (``selfspec.faults``), then a
rerun that must end exactly where an uninterrupted run ends. ``pytest -m faults`` runs them; they are part of
the default run too (about 3 minutes on 2 cores, most of it subprocess start-up)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from selfspec import faults
from selfspec.data import build_dataset, load_splits
from tests.data.conftest import compose as compose_generate

REPO = Path(__file__).resolve().parents[1]
GENERATE = str(REPO / "data" / "generate.py")

pytestmark = pytest.mark.faults

# The target writes 8 short prompts of its own and answers them, in 4 shards of 2.
DATA = [
    "target=tiny_random",
    "data.num_prompts=8",
    "data.max_new_tokens=16",
    "data.batch_size=2",
    "data.shard_size=2",
]


def test_maybe_die_acts_at_the_nth_hit_of_its_point_only(monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: sent.append(sig))
    monkeypatch.setattr(faults, "_hits", faults.Counter())
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.maybe_die("x")
    monkeypatch.setenv(faults.ENV, "x:2")
    faults.maybe_die("x"), faults.maybe_die("y")
    assert sent == []
    faults.maybe_die("x")
    assert sent == [signal.SIGKILL]
    monkeypatch.setenv(faults.ENV, "y:1:stop")
    faults.maybe_die("y")
    assert sent == [signal.SIGKILL, signal.SIGSTOP]


# -- helpers --------------------------------------------------------------------------------------------------


def _env(fault: str | None) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = "1"  # tiny models: a second thread only fights the test process for the cores
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", faults.ENV):
        env.pop(k, None)
    if fault:
        env[faults.ENV] = fault
    return env


@contextlib.contextmanager
def _generate(tmp_path: Path, cache: Path, fault: str | None) -> Iterator[subprocess.Popen]:
    """``python data/generate.py`` in the background, killed on the way out whatever happened."""
    with open(tmp_path / "generate.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, GENERATE, *DATA, f"data.cache_dir={cache}", f"output_dir={tmp_path / 'D'}"],
            cwd=REPO,
            env=_env(fault),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _until(cond: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stopped(proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"ended with {proc.returncode} before its fault point"
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _rows(dataset: Path) -> dict[str, dict]:
    splits = load_splits(dataset)
    return {name: split.to_dict() for name, split in splits.items()}


def _data_cfg(cache: Path):
    return compose_generate([*DATA, f"data.cache_dir={cache}"])


@pytest.fixture(scope="module")
def reference_rows(tiny_target, tmp_path_factory) -> dict[str, dict]:
    """The dataset of an uninterrupted build."""
    return _rows(build_dataset(_data_cfg(tmp_path_factory.mktemp("reference")), *tiny_target))


# -- data generation ----------------------------------------------------------------------------------------


@pytest.mark.timeout(400)
@pytest.mark.parametrize("then", ["continue", "kill"])
def test_a_second_job_waits_for_the_first_and_never_rebuilds(
    then, tmp_path, tiny_target, reference_rows, caplog
):
    """Job A is frozen while it holds the dataset lock (one shard committed, the next half written); job B
    (in-process, same config) waits for it. When A goes on, B reuses A's dataset; when A is killed, B resumes
    A's build. Either way B ends with the uninterrupted build's rows."""
    cache, result = tmp_path / "cache", {}

    def job_b() -> None:
        try:
            result["path"] = build_dataset(_data_cfg(cache), *tiny_target)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    with _generate(tmp_path, cache, "data_shard:2:stop") as a, caplog.at_level(logging.INFO):
        _until(lambda: _stopped(a), "job A to stop inside its second shard")
        b = threading.Thread(target=job_b, daemon=True)
        b.start()
        _until(lambda: "another job is building" in caplog.text, "job B to wait for the lock")
        assert b.is_alive()
        os.kill(a.pid, signal.SIGCONT if then == "continue" else signal.SIGKILL)
        a.wait(timeout=240)
        b.join(timeout=240)
    assert "error" not in result, result.get("error")
    assert a.returncode == (0 if then == "continue" else -signal.SIGKILL), (
        tmp_path / "generate.log"
    ).read_text()
    assert ("built by another job" in caplog.text) == (then == "continue")
    assert _rows(result["path"]) == reference_rows
    work = result["path"].parent
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == [
        "COMPLETE",
        "dataset",
        "meta.json",
        "prompts.json",
    ]
