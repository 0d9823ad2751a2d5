"""``python data/generate.py`` end to end: the done-when command, and a SIGKILL mid-way then a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "data" / "generate.py")


def _cmd(*overrides: str) -> list[str]:
    return [sys.executable, SCRIPT, "target=tiny_random", *overrides]


@pytest.mark.timeout(300)
def test_done_when_command(tmp_path):
    out = tmp_path / "D"
    proc = subprocess.run(
        _cmd(
            "data.num_prompts=16",
            "data.max_new_tokens=16",
            f"output_dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    splits = datasets.load_from_disk(str(out / "dataset"))
    assert set(splits) == {"train", "eval"} and len(splits["train"]) + len(splits["eval"]) == 16
    assert {"input_ids", "loss_mask", "prompt_len"} <= set(splits["train"].column_names)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["target"] == "tiny-random" and meta["data"]["source"] == "self"
    assert meta["data"]["max_new_tokens"] == 16 and len(meta["weights_fingerprint"]) == 16


@pytest.mark.timeout(540)
def test_sigkill_then_resume(tmp_path, chat_file):
    cache = tmp_path / "cache"
    args = _cmd(
        "data.source=jsonl",
        f"data.path={chat_file}",
        "data.num_prompts=12",
        "data.max_new_tokens=24",
        "data.batch_size=1",
        "data.shard_size=2",
        f"data.cache_dir={cache}",
        f"output_dir={tmp_path / 'D'}",
    )
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    shards: list[Path] = []
    while not shards and proc.poll() is None and time.monotonic() < deadline:
        shards = [p for p in cache.glob("*/shards/*") if not p.name.startswith(".")]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert shards, "no shard was committed before the process ended"
    (work,) = [p for p in cache.iterdir() if not p.name.startswith(".")]  # beside it: the builder's lock
    assert not (work / "COMPLETE").exists() and not (work / "dataset").exists()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    splits = datasets.load_from_disk(str(work / "dataset"))
    idx = list(splits["train"]["prompt_index"]) + list(splits["eval"]["prompt_index"])
    assert sorted(idx) == list(range(12))  # exactly num_prompts, none duplicated, none lost


def test_two_ranks_write_the_single_rank_dataset(tmp_path):
    """``torchrun --nproc_per_node 2 data/generate.py``: the ranks split the shards and rank 0 assembles a dataset
    equal, row for row, to the one a single process writes (a shard's samples do not depend on its rank)."""
    import socket

    with socket.socket() as s:  # torchrun's static rendezvous needs a real port (0 hangs)
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    common = ["data.num_prompts=12", "data.max_new_tokens=12", "data.shard_size=2", "data.batch_size=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    runs = {
        "two": launcher + [SCRIPT, "target=tiny_random"],
        "one": _cmd(),
    }
    splits = {}
    for name, cmd in runs.items():
        out = tmp_path / name
        args = [*common, f"data.cache_dir={tmp_path / name / 'cache'}", f"output_dir={out}"]
        proc = subprocess.run(cmd + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        splits[name] = datasets.load_from_disk(str(out / "dataset"))
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["shards_by_rank"] == {"0": 3, "1": 3}  # 12 prompts in shards of 2, split between the ranks
    for split in ("train", "eval"):
        assert splits["two"][split].to_dict() == splits["one"][split].to_dict()
    assert len(splits["two"]["train"]) + len(splits["two"]["eval"]) == 12
