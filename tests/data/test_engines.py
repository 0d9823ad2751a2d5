"""data.engine: openai (against a fake OpenAI-compatible server answered by the tiny target) and vllm (bad input).

The real-server checks (``vllm serve``) are in test_vllm_serve.py, behind the ``vllm`` marker.
"""

from __future__ import annotations

import sys

import pytest

from selfspec.data import build_dataset, load_splits
from selfspec.data.builder import dataset_meta
from selfspec.data.rollout import finish_output
from selfspec.utils import SelfspecError
from tests.data.conftest import compose, write_jsonl
from tests.data.fake_openai import FakeServer

TWO_TURNS = {
    "messages": [
        {"role": "user", "content": "Say something about rivers."},
        {"role": "assistant", "content": "(old)"},
        {"role": "user", "content": "And about lakes?"},
    ]
}


@pytest.fixture
def prompts_file(tmp_path):
    records = [{"prompt": f"Question {i}: what is {i} times {i}?"} for i in range(9)] + [TWO_TURNS]
    return write_jsonl(tmp_path / "prompts.jsonl", records)


def _cfg(tmp_path, prompts_file, *overrides):
    return compose(
        [
            "target=tiny_random",
            "data.source=jsonl",
            f"data.path={prompts_file}",
            "data.num_prompts=10",
            "data.max_new_tokens=12",
            "data.batch_size=1",
            "data.shard_size=2",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.openai.backoff_s=0.01",
            *overrides,
        ]
    )


def _rows(path) -> dict[int, tuple[list[int], list[int]]]:
    splits = load_splits(path)
    out = {}
    for split in splits.values():
        for r in split:
            assert r["prompt_index"] not in out, "a prompt is in the dataset twice"
            out[r["prompt_index"]] = (list(r["input_ids"]), list(r["loss_mask"]))
    return out


def _openai(url: str, *more: str) -> list[str]:
    return ["data.engine=openai", f"data.openai.base_url={url}", "data.openai.concurrency=3", *more]


def test_openai_engine_writes_the_hf_dataset(tiny_target, tmp_path, prompts_file):
    """Greedy through a server equals greedy in-process, token for token, loss masks and both turns included."""
    reference = _rows(build_dataset(_cfg(tmp_path, prompts_file), *tiny_target))
    with FakeServer(*tiny_target, stop_in_ids=False) as server:  # a server that leaves the stop token out
        got = _rows(build_dataset(_cfg(tmp_path, prompts_file, *_openai(server.url)), *tiny_target))
    assert got == reference
    assert len(got) == 10 and server.answered >= 11  # the two-turn conversation asked twice


def test_server_going_away_mid_run_then_resume(tiny_target, tmp_path, prompts_file):
    reference = _rows(build_dataset(_cfg(tmp_path, prompts_file), *tiny_target))
    args = _openai("URL", "data.openai.max_retries=2")
    with FakeServer(*tiny_target, die_after=5) as server:
        cfg = _cfg(tmp_path, prompts_file, *[a.replace("URL", server.url) for a in args])
        with pytest.raises(SelfspecError, match="shards already written are kept") as err:
            build_dataset(cfg, *tiny_target)
    assert "\n" not in str(err.value)
    (work,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not (p / "COMPLETE").exists()]
    kept = sorted(p.name for p in (work / "shards").iterdir() if not p.name.startswith("."))
    assert kept, "no shard was committed before the server went away"
    with FakeServer(*tiny_target) as server:  # restarted elsewhere: the URL is not part of the dataset's key
        cfg = _cfg(tmp_path, prompts_file, *[a.replace("URL", server.url) for a in args])
        got = _rows(build_dataset(cfg, *tiny_target))
    assert got == reference  # nothing lost, nothing duplicated
    assert server.answered == 11 - 2 * len(kept) - (
        1 if "00004" in kept else 0
    )  # kept shards were not redone


def test_busy_server_is_retried(tiny_target, tmp_path, prompts_file):
    with FakeServer(*tiny_target, busy=4) as server:
        got = _rows(build_dataset(_cfg(tmp_path, prompts_file, *_openai(server.url)), *tiny_target))
    assert len(got) == 10 and server.requests >= 11 + 4


def test_unknown_model_is_refused_before_generating(tiny_target, tmp_path, prompts_file):
    with FakeServer(*tiny_target, name="served-target") as server:
        cfg = _cfg(tmp_path, prompts_file, *_openai(server.url, "data.openai.model=another"))
        with pytest.raises(
            SelfspecError, match=r"serves no model named 'another' \(it serves \['served-target'\]"
        ):
            build_dataset(cfg, *tiny_target)
        assert server.requests == 0  # refused from /v1/models, before any completion
    assert not list((tmp_path / "cache").glob("*/shards/*"))


def test_another_tokenizer_is_refused(tiny_target, tmp_path, prompts_file):
    with (
        FakeServer(*tiny_target, wrong_ids=True) as server,
        pytest.raises(SelfspecError, match="another model or tokenizer|outside the target tokenizer"),
    ):
        build_dataset(_cfg(tmp_path, prompts_file, *_openai(server.url)), *tiny_target)


def test_unreachable_server_is_one_clear_error(tiny_target, tmp_path, prompts_file):
    cfg = _cfg(tmp_path, prompts_file, *_openai("http://127.0.0.1:9/v1", "data.openai.max_retries=1"))
    with pytest.raises(SelfspecError, match=r"failed /models 2 times .*restart the server and rerun"):
        build_dataset(cfg, *tiny_target)


def test_vllm_missing_is_one_line(tiny_target, tmp_path, prompts_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(SelfspecError, match="needs vLLM.*pip install") as err:
        build_dataset(_cfg(tmp_path, prompts_file, "data.engine=vllm"), *tiny_target)
    assert "\n" not in str(err.value)


def test_a_complete_vllm_dataset_is_reused_without_vllm(tiny_target, tmp_path, prompts_file, monkeypatch):
    """A training venv without vLLM trains on a dataset the vLLM venv wrote (same key, COMPLETE)."""
    import shutil

    from selfspec.data.builder import dataset_dir

    made = build_dataset(_cfg(tmp_path, prompts_file), *tiny_target).parent  # stands in for vLLM's output
    cfg = _cfg(tmp_path, prompts_file, "data.engine=vllm")
    work = dataset_dir(cfg, dataset_meta(cfg, *tiny_target))
    shutil.copytree(made, work)
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert build_dataset(cfg, *tiny_target) == work / "dataset"


def test_unknown_engine(tiny_target, tmp_path, prompts_file):
    with pytest.raises(SelfspecError, match="unknown data.engine='sglang': use one of hf, vllm, openai"):
        build_dataset(_cfg(tmp_path, prompts_file, "data.engine=sglang"), *tiny_target)


def test_engine_key(tiny_target, tmp_path, prompts_file):
    """hf keys are what they were before engines existed; another engine is its own dataset, and only the
    settings that change the content (not the URL, the concurrency or the parallelism) enter the key."""

    def key(*overrides: str):
        return dataset_meta(_cfg(tmp_path, prompts_file, *overrides), *tiny_target)["data"]

    hf = key()
    assert "engine" not in hf and "vllm" not in hf and "openai" not in hf
    assert key("data.openai.base_url=http://x/v1") == hf  # another engine's settings do not matter to hf
    a = key("data.engine=openai", "data.openai.model=m")
    assert a != hf and a["engine"] == {"name": "openai", "model": "m"}
    assert key("data.engine=openai", "data.openai.model=m", "data.openai.base_url=http://y/v1") == a
    assert key("data.engine=openai", "data.openai.model=m", "data.openai.concurrency=1") == a
    v = key("data.engine=vllm")
    assert v["engine"]["name"] == "vllm" and key("data.engine=vllm", "data.vllm.tensor_parallel_size=4") == v
    assert key("data.engine=vllm", "data.vllm.dtype=float32") != v


def test_finish_output_normalises_stops():
    assert finish_output([5, 6, 2], True, [2]) == ([5, 6, 2], True)
    assert finish_output([5, 6], True, [2, 7], stop_reason=7) == ([5, 6, 7], True)
    assert finish_output([5, 6], True, [2, 7]) == ([5, 6, 2], True)
    assert finish_output([5, 2, 6], False, [2]) == ([5, 2], True)  # a server that ignored the stop ids
    assert finish_output([5, 6], False, [2]) == ([5, 6], False)


@pytest.mark.parametrize("cpu", [True, False])
def test_vllm_on_cpu_prefills_whole(cpu, monkeypatch):
    """vLLM's CPU runner fails on a seeded request whose prefill is split: chunked prefill goes off there
    (unless data.vllm.kwargs sets it), and stays vLLM's own default elsewhere."""
    import types

    from selfspec.data.config import VLLMEngineConf
    from selfspec.data.engine_vllm import VLLMEngine

    seen: list[dict] = []
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.append(kw)
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    VLLMEngine("m", "bfloat16", [0], VLLMEngineConf())
    assert seen[-1].get("enable_chunked_prefill", "vLLM's default") == (False if cpu else "vLLM's default")
    VLLMEngine("m", "bfloat16", [0], VLLMEngineConf(kwargs={"enable_chunked_prefill": True}))
    assert seen[-1]["enable_chunked_prefill"] is True
