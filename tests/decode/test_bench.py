"""The acceptance report end to end on the tiny target: every method runs, the files have the expected shape,
selfspec's outputs are identical to greedy. Speeds are recorded, never asserted."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from selfspec.decode.bench.report import register_bench, run_report
from selfspec.decode.bench.setup import bench_from_config
from selfspec.heads import build_drafter, save_drafter
from selfspec.target import tokenizer_fingerprint
from selfspec.utils import SelfspecError


def _prompts(tok, n=2):
    msgs = [[{"role": "user", "content": f"say {i} {i} {i}"}] for i in range(n)]
    return [
        tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for m in msgs
    ]


def test_report_files_and_rows(tmp_path, tiny_target):
    model, tok = tiny_target
    drafters = [build_drafter({"type": "medusa"}, model), build_drafter({"type": "draft_model"}, model)]
    report = run_report(model, tok, drafters, _prompts(tok), tmp_path, max_new_tokens=8, warmup=0)

    names = [m["name"] for m in report["methods"]]
    assert names == [
        "target",
        "prompt_lookup",
        "assisted:draft_model",
        "selfspec:medusa",
        "selfspec:draft_model",
    ]
    assert "assisted:medusa" in report["skipped"]
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert [m["name"] for m in on_disk["methods"]] == names
    for m in report["methods"]:
        assert m["new_tokens"] > 0 and m["target_forwards"] > 0 and m["tokens_per_s"] > 0
        assert len(m["per_prompt"]) == 2
        assert m["speedup"] is not None
        if m["method"] == "target":
            assert m["mean_accepted_tokens"] == pytest.approx(1.0)
            assert m["acceptance_by_position"] is None
        if m["method"] == "selfspec":
            assert m["identical"], m
            assert m["acceptance_by_position"], m
            assert all(a is None or 0.0 <= a <= 1.0 for a in m["acceptance_by_position"])
    md = (tmp_path / "bench.md").read_text()
    assert "| selfspec medusa |" in md and "| target alone (greedy) | 1.00 |" in md
    png = (tmp_path / "acceptance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_command_from_config(tmp_path, tiny_target):
    """The Hydra config of ``decode/bench/run.py`` (conf/bench.yaml + schema) with a saved drafter and a prompts file."""
    model, tok = tiny_target
    folder = save_drafter(
        build_drafter({"type": "eagle"}, model),
        tmp_path / "drafter",
        target_name_or_path="tiny-random",
        tokenizer_fingerprint=tokenizer_fingerprint(tok),
    )
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    register_bench()
    GlobalHydra.instance().clear()
    with initialize_config_module("selfspec.conf", version_base=None):
        cfg = compose(
            "bench",
            overrides=[
                f"drafter={folder}",
                f"prompts={prompts}",
                "max_new_tokens=4",
                "warmup=0",
                "methods=[target,selfspec]",
                f"output_dir={tmp_path / 'out'}",
                "device=cpu",
                "decode.depth=2",
            ],
        )
        with pytest.raises(Exception, match="max_new_token"):  # the schema refuses a misspelt key
            compose("bench", overrides=[f"drafter={folder}", "max_new_token=4"])
    report = bench_from_config(cfg)
    assert [m["name"] for m in report["methods"]] == ["target", "selfspec:eagle"]
    assert report["methods"][1]["identical"]
    assert (tmp_path / "out" / "bench.md").is_file()
    # a bf16 target: the fp32 pairing, on as many prompts as asked
    cfg.target.dtype, cfg.fp32_prompts = "bf16", 1
    note = bench_from_config(cfg)["dtype"]
    assert note["dtype"] == "bf16" and note["paired_prompts"] == 1 and note["over_fp32"] > 0
    cfg.target.dtype = "fp32"  # an fp32 target has nothing to pair with
    assert "over_fp32" not in bench_from_config(cfg)["dtype"]
    cfg.drafter = str(tmp_path / "nowhere")
    with pytest.raises(SelfspecError, match="not a drafter folder"):
        bench_from_config(cfg)


def test_vllm_rows_are_skipped_with_the_reason_where_vllm_is_absent(tmp_path, tiny_target, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    model, tok = tiny_target
    drafters = [build_drafter({"type": "medusa"}, model)]
    report = run_report(
        model, tok, drafters, _prompts(tok, 1), None, max_new_tokens=4, warmup=0,
        methods=["target", "vllm", "vllm+drafter"],
    )  # fmt: skip
    assert [m["name"] for m in report["methods"]] == ["target"]
    assert "not importable" in report["skipped"]["vllm"] and "vllm+drafter" in report["skipped"]


@pytest.mark.vllm
@pytest.mark.integration
@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("vllm") is None,
    reason="vLLM is not importable (its own venv)",
)
def test_vllm_row_beside_the_target(embedded_target):
    model, tok = embedded_target
    report = run_report(model, tok, [], _prompts(tok, 2), None, max_new_tokens=16, warmup=1,
                        methods=["target", "vllm"])  # fmt: skip
    row = {m["name"]: m for m in report["methods"]}["vllm"]
    assert row["new_tokens"] > 0 and row["mean_accepted_tokens"] == pytest.approx(1.0)
    assert row["identical"] or row["near_ties_only"], row
