"""tree: auto: the planner on synthetic cost curves, the measured curve on the tiny target, and its cache."""

from __future__ import annotations

import json
import logging
import math

import pytest

from selfspec.decode import SpeculativeDecoder
from selfspec.decode.cost import CostCurve, cache_path, load_curve, save_curve
from selfspec.decode.measure import choose_tree, curve_for
from selfspec.decode.plan import best_paths, expected_tokens, plan_tree, predict
from selfspec.heads import build_drafter

# Acceptance by depth and rank: a fair drafter (first choice right 70% of the time, second 15%, ...).
P = [[0.7, 0.15, 0.05, 0.03]] * 6


def _curve(verify: dict[int, float], draft_per_level: float = 2.0, spec_overhead=None) -> CostCurve:
    draft = {f"{d},{k}": d * draft_per_level for d in range(1, 9) for k in (1, 2, 4, 8)}
    return CostCurve({"test": 1}, verify, draft, 0.5, spec_overhead or {})


GPU_LIKE = {1: 20.0, 2: 20.2, 4: 20.5, 8: 21.0, 16: 22.0, 32: 25.0, 64: 32.0}  # verification nearly free
FP32_CPU = {1: 42.0, 2: 67.0, 4: 64.0, 8: 63.0, 16: 76.0, 32: 122.0, 64: 240.0}  # measured shape, 2-core fp32


def test_best_paths_are_closed_under_ancestors_and_most_probable():
    paths = best_paths(P, 10, 4, 3)
    chosen = {q for q, _ in paths}
    assert len(paths) == 10 and all(q[:-1] in chosen for q in chosen if len(q) > 1)
    floor = min(pr for _, pr in paths)
    for q in [(0, 0, 0, 1), (2,), (1, 1)]:  # anything left out is no more probable than what was kept
        if q not in chosen:
            assert math.prod(P[d][r] for d, r in enumerate(q)) <= floor + 1e-12
    assert expected_tokens(paths) == pytest.approx(1 + sum(pr for _, pr in paths))


def test_cheap_verification_buys_a_big_tree_expensive_one_a_small_one():
    gpu = plan_tree(_curve(GPU_LIKE, 0.5), P)
    cpu = plan_tree(_curve(FP32_CPU), P)
    assert gpu.depth >= 3 and gpu.total_tokens >= 8 and gpu.speedup > 1.5
    assert cpu.total_tokens < gpu.total_tokens and cpu.speedup > 1.0


def test_nothing_pays_then_no_speculation():
    weak = [[0.05, 0.02]] * 4
    choice = plan_tree(_curve(FP32_CPU), weak)
    assert choice.depth == 0 and choice.speedup == 1.0 and "no speculation" in choice.describe()


def test_speculative_step_overhead_is_charged():
    """The bookkeeping of a speculative step, measured apart, makes marginal trees lose."""
    plain = plan_tree(_curve(FP32_CPU), P)
    heavy = plan_tree(_curve(FP32_CPU, spec_overhead={4: 60.0, 16: 60.0}), P)
    assert heavy.speedup < plain.speedup
    assert heavy.depth == 0 or heavy.ms_per_step > plain.ms_per_step
    curve = _curve(FP32_CPU, spec_overhead={4: 2.0, 16: 8.0})
    assert [curve.spec_overhead(n) for n in (1, 4, 10, 16, 64)] == pytest.approx([2.0, 2.0, 5.0, 8.0, 8.0])
    forced = predict(curve, P, plan_tree(_curve(FP32_CPU), P))
    assert forced.ms_per_step == pytest.approx(plain.ms_per_step + curve.spec_overhead(plain.total_tokens))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSPEC_HOME", str(tmp_path))
    return tmp_path


def _decoder(tiny_target, **options):
    model, tok = tiny_target
    drafter = build_drafter({"type": "eagle3", "draft_vocab_size": 128}, model)
    drafter.acceptance = {"p": P[:4]}
    return SpeculativeDecoder(model, drafter, tokenizer=tok, **options)


def test_measured_curve_is_cached_and_a_corrupt_cache_is_remeasured(tiny_target, home, caplog):
    dec = _decoder(tiny_target)
    curve = curve_for(dec)
    assert set(curve.verify_ms) >= {1, 4, 16} and all(v > 0 for v in curve.verify_ms.values())
    assert set(curve.spec_overhead_ms) == {4, 16} and all(v >= 0 for v in curve.spec_overhead_ms.values())
    for shape, ms in curve.draft_ms.items():  # a smaller draft never costs more than a deeper or wider one
        depth, width = map(int, shape.split(","))
        for bigger in (f"{depth + 1},{width}", f"{depth},{width * 2}"):
            assert ms <= curve.draft_ms.get(bigger, ms)
    path = cache_path(curve.key)
    assert json.loads(path.read_text())["spec_overhead_ms"]
    assert load_curve(curve.key) == curve
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert load_curve(curve.key) is None
    assert "measuring again" in caplog.text
    foreign = CostCurve({**curve.key, "device": "cuda:elsewhere"}, curve.verify_ms, curve.draft_ms, 0.0)
    save_curve(foreign)
    path.write_text(cache_path(foreign.key).read_text())  # another machine's curve under this key's name
    assert load_curve(curve.key) is None
    choice = choose_tree(dec)
    assert choice.source == "cost model" and choice.depth >= 0


def test_a_forced_tree_the_model_says_loses_warns_and_is_used(tiny_target, home, caplog):
    dec = _decoder(tiny_target, depth=8, topk=8, total_tokens=64)
    dec.drafter.acceptance = {"p": [[0.01, 0.01]] * 8}
    with caplog.at_level(logging.WARNING):
        choice = dec.tree_choice()
    assert (choice.depth, choice.topk, choice.total_tokens) == (8, 8, 64) and choice.source == "fixed"
    assert "decoding with it as asked" in caplog.text
