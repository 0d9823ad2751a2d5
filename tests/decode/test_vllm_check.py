"""scripts/vllm_check.py's verdict (no vLLM needed): fastest round kept, fp32 exact, bf16 near-ties only, and the
accepted-length tolerance; ``divergences`` measures the margin where two outputs part."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("vllm_check", REPO / "scripts" / "vllm_check.py")
vllm_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vllm_check)


def _run(outputs, seconds, drafts=0, accepted=0, per_pos=None):
    spec_ = {"drafts": drafts, "draft_tokens": 3 * drafts, "accepted": accepted, "per_pos": per_pos or []}
    return {"outputs": outputs, "seconds": seconds, "tokens": sum(map(len, outputs)), "spec": spec_}


def _ours(outputs, tau=2.0):
    return {"outputs": outputs, "tokens": sum(map(len, outputs)), "seconds": 1.0, "target_seconds": 2.0,
            "mean_accepted": tau, "by_position": [0.6, 0.5, None]}  # fmt: skip


OUT = [[1, 2, 3, 4], [5, 6, 7, 8]]
SAME = {"noise": 0.5, "divergences": [], "near_ties_only": True}


def _args(dtype="bf16"):
    return SimpleNamespace(drafter="d", prompts="eval", max_new_tokens=4, dtype=dtype, tolerance=0.15)


def test_fastest_round_and_per_round_ratios():
    base = [_run(OUT, 4.0), _run(OUT, 2.0)]  # the second round of vLLM alone was faster
    spec_ = [_run(OUT, 1.0, drafts=4, accepted=4), _run(OUT, 1.6, drafts=4, accepted=4)]
    r = vllm_check.summarise(_args(), 3, base, spec_, _ours(OUT), SAME, 2)
    assert r["tokens_per_s"]["vllm"] == 8 / 2.0 and r["tokens_per_s"]["vllm+drafter"] == 8 / 1.0
    assert r["speedup_per_round"] == [4.0, 2.0 / 1.6]
    assert r["tau_vllm"] == 2.0 and not r["failures"] and "passed" in r["markdown"]


def test_fp32_difference_fails_bf16_near_tie_passes_and_a_wide_margin_fails():
    base, spec_ = [_run(OUT, 2.0)], [_run([[1, 2, 9, 9], OUT[1]], 1.0, drafts=4, accepted=4)]
    tie = {"noise": 0.5, "divergences": [{"prompt": 0, "index": 2, "margin": 0.1, "near_tie": True}],
           "near_ties_only": True}  # fmt: skip
    wide = {**tie, "divergences": [{**tie["divergences"][0], "margin": 3.0, "near_tie": False}]}
    wide["near_ties_only"] = False
    assert vllm_check.summarise(_args("fp32"), 3, base, spec_, _ours(OUT), tie, 2)["failures"]
    ok = vllm_check.summarise(_args("bf16"), 3, base, spec_, _ours(OUT), tie, 2)
    assert not ok["failures"] and "near-ties only" in ok["markdown"]
    assert vllm_check.summarise(_args("bf16"), 3, base, spec_, _ours(OUT), wide, 2)["failures"]


def test_accepted_length_far_below_selfspec_fails():
    base, spec_ = [_run(OUT, 2.0)], [_run(OUT, 1.9, drafts=8, accepted=2)]  # vLLM: 1.25 tokens a step
    r = vllm_check.summarise(_args(), 3, base, spec_, _ours(OUT, tau=2.0), SAME, 2)
    assert any("accepts 1.25" in f for f in r["failures"])


def test_divergences_margin_at_the_first_differing_token(tiny_target):
    model, _ = tiny_target
    prompts = [[3, 4, 5, 6], [7, 8, 9, 10]]
    ref = [
        model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False)[0, 4:].tolist() for p in prompts
    ]
    got = [ref[0], ref[1][:2] + [(ref[1][2] + 1) % 100] + ref[1][3:]]
    d = vllm_check.divergences(model, prompts, ref, got, vllm_check.reference_noise(model, prompts, ref))
    assert [x["prompt"] for x in d["divergences"]] == [1] and d["divergences"][0]["index"] == 2
    with torch.no_grad():
        top = model(torch.tensor([prompts[1] + ref[1][:2]])).logits[0, -1].topk(2).values
    assert abs(d["divergences"][0]["margin"] - float(top[0] - top[1])) < 1e-5
    assert d["near_ties_only"] == (d["divergences"][0]["margin"] <= d["noise"])
