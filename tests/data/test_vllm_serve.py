"""data.engine=openai against a real ``vllm serve`` (started and stopped here, on 127.0.0.1), and
data.engine=vllm in-process, on the embedded target.

vLLM pins its own torch and transformers, so it lives in its own venv (README, "vLLM"). These tests run where
vLLM is importable by this interpreter or where ``SELFSPEC_VLLM_PYTHON`` names a Python that has it (only the
server needs it then); otherwise they are skipped with that reason. ``scripts/vllm_check.sh`` runs them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from selfspec.data import build_dataset, load_splits
from selfspec.utils import SelfspecError
from tests.data.conftest import compose, write_jsonl

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

HAS_VLLM = importlib.util.find_spec("vllm") is not None
VLLM_PYTHON = os.environ.get("SELFSPEC_VLLM_PYTHON") or (sys.executable if HAS_VLLM else None)
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_serve(model_dir: str, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``vllm serve`` the target as "target" (fp32, eager); yields (base URL, process); always stopped after."""
    port = _free_port()
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]
    cmd += ["--served-model-name", "target", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    cmd += ["--enforce-eager", "--max-model-len", "2048", "--disable-log-stats"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"vllm serve exited with {proc.returncode}: see {log}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, (
                f"vllm serve did not start within {START_TIMEOUT_S} s: see {log}"
            )
            time.sleep(1)
        yield url, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its engine-core process
        proc.wait(timeout=60)


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    records = [{"prompt": f"Give me one fact about the number {i}."} for i in range(11)]
    records.append(
        {
            "messages": [
                {"role": "user", "content": "Name a river."},
                {"role": "assistant", "content": "(old)"},
                {"role": "user", "content": "How long is it?"},
            ]
        }
    )
    return write_jsonl(tmp_path / "prompts.jsonl", records)


def _cfg(tmp_path: Path, prompts_file: Path, *overrides: str):
    return compose(
        [
            "data.source=jsonl",
            f"data.path={prompts_file}",
            "data.num_prompts=12",
            "data.max_new_tokens=24",
            "data.shard_size=2",
            f"data.cache_dir={tmp_path / 'cache'}",
            "target.dtype=fp32",
            *overrides,
        ]
    )


def _rows(path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for split in load_splits(path).values():
        for r in split:
            assert r["prompt_index"] not in out, "a prompt is in the dataset twice"
            assert sum(r["loss_mask"]) > 0 and r["prompt_len"] < len(r["input_ids"])
            out[r["prompt_index"]] = list(r["input_ids"])
    return out


@pytest.mark.skipif(VLLM_PYTHON is None, reason="vLLM is not installed here (set SELFSPEC_VLLM_PYTHON)")
@pytest.mark.timeout(1500)
def test_openai_engine_against_vllm_serve_survives_the_server_going_away(
    embedded_target, tmp_path, prompts_file
):
    from selfspec.target import EMBEDDED_TARGET, resolve_target_path

    model_dir, log = resolve_target_path(EMBEDDED_TARGET), tmp_path / "vllm_serve.log"
    args = ["data.engine=openai", "data.openai.concurrency=4", "data.openai.max_retries=2"]
    args.append("data.openai.backoff_s=0.5")
    cache = tmp_path / "cache"
    with vllm_serve(model_dir, log) as (url, proc):

        def kill_after_first_shard() -> None:  # the server goes away mid-run
            while proc.poll() is None and not [
                p for p in cache.glob("*/shards/*") if not p.name.startswith(".")
            ]:
                time.sleep(0.05)
            stop(proc)

        killer = threading.Thread(target=kill_after_first_shard, daemon=True)
        killer.start()
        cfg = _cfg(tmp_path, prompts_file, *args, f"data.openai.base_url={url}")
        with pytest.raises(SelfspecError, match="shards already written are kept"):
            build_dataset(cfg, *embedded_target)
        killer.join()
    (work,) = [p for p in cache.iterdir() if p.is_dir()]
    kept = [p for p in (work / "shards").iterdir() if not p.name.startswith(".")]
    assert kept and len(kept) < 6 and not (work / "COMPLETE").exists()
    with vllm_serve(model_dir, log) as (url, _):
        got = _rows(
            build_dataset(
                _cfg(tmp_path, prompts_file, *args, f"data.openai.base_url={url}"), *embedded_target
            )
        )
    assert sorted(got) == list(range(12))  # nothing lost, nothing duplicated
    # The same conversations answered in-process: vLLM's fp32 kernels round differently from torch's, so a
    # near-tie may flip a token; the prompts (template tokens) must agree everywhere, the answers nearly always.
    ref = _rows(build_dataset(_cfg(tmp_path, prompts_file), *embedded_target))
    same = sum(got[i] == ref[i] for i in ref)
    assert same >= 9, f"only {same} of 12 conversations equal the in-process answers"


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not importable by this interpreter (run in its venv)")
@pytest.mark.timeout(1500)
def test_vllm_engine_writes_a_dataset(embedded_target, tmp_path, prompts_file):
    cfg = _cfg(tmp_path, prompts_file, "data.engine=vllm", "data.vllm.max_model_len=2048")
    got = _rows(build_dataset(cfg, *embedded_target))
    ref = _rows(build_dataset(_cfg(tmp_path, prompts_file), *embedded_target))
    assert sorted(got) == list(range(12))
    same = sum(got[i] == ref[i] for i in ref)
    assert same >= 9, f"only {same} of 12 conversations equal the in-process answers"
