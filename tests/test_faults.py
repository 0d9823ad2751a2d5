"""Fault injection: real SIGKILLs (and SIGSTOPs) at ``SELFSPEC_FAULT`` points (``selfspec.faults``), then a
rerun that must end exactly where an uninterrupted run ends. ``pytest -m faults`` runs them; they are part of
the default run too (about a minute on 2 cores, most of it subprocess start-up)."""

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
import torch
from safetensors.torch import load_file

from selfspec import faults
from selfspec.data import build_dataset, load_splits
from selfspec.train import checkpoints
from tests.data.conftest import compose as compose_generate
from tests.train.conftest import TINY, run_cli
from tests.train.conftest import compose as compose_train

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


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The in-process jobs run on one thread, like the subprocesses (OMP_NUM_THREADS=1): on a 2-core box a
    second thread only fights the other job for the cores, and both sides then compute alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# A kill point of the data job, and what the killed run must have left: (fault, committed shards, dataset/).
DATA_FAULTS = [
    pytest.param("data_shard:3", 2, False, id="inside-the-3rd-shard"),
    pytest.param("data_assemble", 4, True, id="after-dataset-before-COMPLETE"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("fault", "shards", "assembled"), DATA_FAULTS)
def test_data_job_killed_then_rerun_writes_the_same_rows(
    fault, shards, assembled, tmp_path, tiny_target, reference_rows
):
    cache = tmp_path / "cache"
    with _generate(tmp_path, cache, fault) as proc:
        proc.wait(timeout=240)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "generate.log").read_text()[-3000:]
    (work,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    committed = [p for p in (work / "shards").iterdir() if not p.name.startswith(".")]
    assert len(committed) == shards and not (work / "COMPLETE").exists()
    assert (work / "dataset").is_dir() == assembled
    path = build_dataset(_data_cfg(cache), *tiny_target)  # the rerun
    assert _rows(path) == reference_rows
    assert not (work / "shards").exists() and not [p for p in work.iterdir() if ".tmp-" in p.name]


# -- training -------------------------------------------------------------------------------------------------

TRAIN = [
    "+experiment=medusa",
    *TINY,
    "train.max_steps=5",
    "train.save_every=2",
    "train.warmup_steps=2",
    "train.eval_every=0",
]


def _train_cfg(cache: Path, out: Path, extra: list[str]):
    return compose_train([*TRAIN, *extra, f"data.cache_dir={cache}", f"output_dir={out}"])


def _logged(out: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def train_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train-data")


def _uninterrupted(train_cache: Path, out: Path, extra: list[str]) -> dict:
    from selfspec.train.parallel import destroy_distributed
    from selfspec.train.run import train_job

    try:
        result = train_job(_train_cfg(train_cache, out, extra))
    finally:
        destroy_distributed()
    return {"log": _logged(out), "weights": load_file(str(result.folder / "model.safetensors"))}


@pytest.fixture(scope="module")
def reference_run(train_cache, tmp_path_factory) -> dict:
    """An uninterrupted training run (it also writes the dataset the killed runs reuse)."""
    return _uninterrupted(train_cache, tmp_path_factory.mktemp("reference-train"), [])


# A kill point of the training job (SELFSPEC_FAULT), what the killed run leaves ("out:<glob>" in output_dir,
# "cache:<glob>" in the data cache), the checkpoint the rerun must resume from (None: from scratch), and
# overrides. A new kill point (e.g. one in the offline feature cache) is one more row.
TRAIN_FAULTS = [
    pytest.param(
        "train_step:4", "out:train_log.jsonl", "step_0000002", [], id="after-the-4th-optimizer-step"
    ),
    pytest.param(
        "ckpt_between_files:2",
        "out:checkpoints/step_0000004/mp_rank_00_model_states.pt",
        "step_0000002",
        [],
        id="inside-the-2nd-checkpoint-save",
    ),
    pytest.param("export_between_files", "out:.drafter.tmp-*", "step_0000005", [], id="inside-the-export"),
    pytest.param(
        "feature_shard:2",
        "cache:*/features/*/*/.*.tmp-*",
        None,
        ["train.features=offline"],
        id="inside-the-2nd-feature-shard",
    ),
]


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("fault", "left", "resume_from", "extra"), TRAIN_FAULTS)
def test_training_killed_then_rerun_ends_like_the_uninterrupted_run(
    fault, left, resume_from, extra, tmp_path, train_cache, reference_run
):
    from selfspec.train.run import train_job

    out = tmp_path / "run"
    args = [*TRAIN, *extra, f"data.cache_dir={train_cache}", f"output_dir={out}"]
    proc = run_cli(args, extra_env={faults.ENV: fault}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    where, _, pattern = left.partition(":")
    assert list({"out": out, "cache": train_cache}[where].glob(pattern)), (
        f"the kill missed its point: no {left}"
    )
    assert checkpoints.latest_tag(out / "checkpoints") == resume_from
    assert not (out / "drafter").exists()
    result = train_job(_train_cfg(train_cache, out, extra))  # the rerun
    start = int(resume_from[5:]) if resume_from else 0
    assert [r["step"] for r in result.history] == list(range(start + 1, 6))
    # Rows with extra settings (offline features) compare with an uninterrupted run of those settings, made
    # after the rerun so that the rerun, not the reference, had to finish what the kill left.
    reference = _uninterrupted(train_cache, tmp_path / "reference", extra) if extra else reference_run
    logged = _logged(out)
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]  # every step once, the killed run's extra rows gone
    for got, want in zip(logged, reference["log"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-5)
    weights = load_file(str(out / "drafter" / "model.safetensors"))
    assert weights.keys() == reference["weights"].keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, reference["weights"][name], rtol=1e-4, atol=1e-5)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert all(checkpoints.is_complete(p) for p in (out / "checkpoints").glob("step_*"))
