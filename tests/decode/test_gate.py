"""The adaptive gate: it picks the faster arm from measured steps, and skipping drafts never changes an output.

Plain steps hand the target's features to the proposer, which feeds them at its next draft; these tests force
the gate through patterns of plain and speculative steps and check greedy identity with ``generate`` for every
family (batch 1 and 4), that a drafter that caught up drafts exactly what it drafts when it never skipped, and
that the target as its own draft model is still accepted whole after skipped steps.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.decode.gate import PROBE_MAX, PROBE_MIN, SpeculationGate
from selfspec.decode.propose import CachedProposer
from selfspec.decode.propose_dflash import DFlashProposer
from selfspec.heads import build_drafter
from tests.decode.test_decoder import DRAFTERS, NEW, _check, batch  # noqa: F401 (the fixture)


class ScriptedGate(SpeculationGate):
    """Speculates by a fixed, repeating pattern; records nothing."""

    def __init__(self, pattern: str) -> None:
        super().__init__(1.0, 1.0, 1.0)
        self.pattern = itertools.cycle(c == "s" for c in pattern)

    def speculate(self) -> bool:
        return next(self.pattern)

    def record(self, spec: bool, ms: float, tokens_per_row: float) -> None:
        pass


def _scripted(dec: SpeculativeDecoder, pattern: str) -> SpeculativeDecoder:
    for b in (1, 4):
        dec._gates[b] = ScriptedGate(pattern)
    return dec


# -- the gate's choice ------------------------------------------------------------------------------------


def _simulate(gate: SpeculationGate, spec_ms: float, spec_tokens: float, plain_ms: float, n: int) -> int:
    """Steps the gate speculated in ``n``, with fixed measured costs."""
    spec_steps = 0
    for _ in range(n):
        spec = gate.speculate()
        spec_steps += spec
        gate.record(spec, spec_ms if spec else plain_ms, spec_tokens if spec else 1.0)
    return spec_steps


def test_gate_turns_speculation_off_when_the_prediction_was_optimistic():
    gate = SpeculationGate.from_prediction(
        plain_ms=50.0, spec_ms=100.0, tokens_per_step=2.4
    )  # predicted 1.2x
    assert gate.speculate()  # it starts from the prediction
    spec = _simulate(gate, spec_ms=120.0, spec_tokens=1.9, plain_ms=55.0, n=400)  # measured: 0.87x
    assert gate.ratio() == pytest.approx((1.9 / 120.0) * 55.0, rel=0.02)
    assert spec <= 400 / gate.probe_every() + 24  # probes only, after ~20 steps to learn (the tokens' memory)
    assert gate.probe_every() >= PROBE_MIN


def test_gate_keeps_a_paying_tree_and_rarely_probes():
    gate = SpeculationGate.from_prediction(plain_ms=50.0, spec_ms=80.0, tokens_per_step=3.0)
    spec = _simulate(gate, spec_ms=80.0, spec_tokens=3.0, plain_ms=50.0, n=500)  # 1.9x
    assert gate.probe_every() >= 40  # about 1% of the steps lost to probing at most
    assert 500 - spec <= 500 / gate.probe_every() + 1


def test_gate_rides_out_runs_of_rejections_on_a_paying_tree():
    """Tokens per speculative step are 1, 2 or 3 at random (mean 2.0, 68.8 ms a step against 42 ms plain:
    1.22x): a streak of rejections must not leave the gate on plain decoding for long."""
    rnd = random.Random(0)
    gate = SpeculationGate.from_prediction(plain_ms=42.0, spec_ms=68.8, tokens_per_step=2.02)
    spec_steps = 0
    for _ in range(2000):
        spec = gate.speculate()
        spec_steps += spec
        tokens = 1 + (rnd.random() < 0.7) + (rnd.random() < 0.3) if spec else 1
        gate.record(spec, (68.8 if spec else 42.0) * rnd.lognormvariate(0, 0.15), tokens)
    assert spec_steps >= 0.9 * 2000


def test_gate_resumes_speculating_after_a_slow_stretch_of_the_host():
    """The host slows for 60 steps, speculative steps (3x) more than plain ones (1.5x), then recovers: the gate
    speculates again in at least 90% of the steps after step 200. Setting running estimates against each other,
    the gate's first rule, kept the slow stretch's speculative time while the plain one recovered, and
    speculated in 153-291 of those 400 steps (seeds 0-7)."""
    for seed in range(4):
        rnd = random.Random(seed)
        gate = SpeculationGate.from_prediction(plain_ms=42.0, spec_ms=68.8, tokens_per_step=2.1)
        late = 0
        for i in range(600):
            spec = gate.speculate()
            slow = (3.0 if spec else 1.5) if i < 60 else 1.0
            tokens = 1 + (rnd.random() < 0.75) + (rnd.random() < 0.35) if spec else 1
            gate.record(spec, (68.8 if spec else 42.0) * slow * rnd.lognormvariate(0, 0.1), tokens)
            late += spec and i >= 200
        assert late >= 0.9 * 400, seed


def test_gate_without_a_prediction_tries_both_arms_first():
    gate = SpeculationGate.from_prediction(0.0, 0.0, 1.0)
    first = gate.speculate()
    gate.record(first, 100.0, 2.0)
    second = gate.speculate()
    assert first and not second
    gate.record(second, 40.0, 1.0)
    assert gate.ratio() == pytest.approx(0.8)
    assert gate.probe_every() <= PROBE_MAX


# -- skipping drafts is lossless ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["spps", "pspppss"])
@pytest.mark.parametrize(
    "name", ["medusa", "eagle-tree", "eagle3-tree", "draft_model-tree", "dflash", "dflash-tree"]
)
def test_skipped_drafts_stay_lossless(name, pattern, tiny_target, batch):  # noqa: F811
    model, _ = tiny_target
    head_cfg, options = DRAFTERS[name]
    torch.manual_seed(0)
    dec = _scripted(
        SpeculativeDecoder(model, build_drafter(head_cfg, model), adaptive=True, **options), pattern
    )
    one, four = _check(dec, tiny_target, batch)
    assert one.stats.plain_steps > 0 and four.stats.plain_steps > 0
    assert one.stats.plain_steps + len(one.stats.offered_by_position) > 0
    assert one.stats.steps > one.stats.plain_steps  # both arms ran


def _recorded_drafts(dec: SpeculativeDecoder, ids: torch.Tensor, monkeypatch) -> dict[int, torch.Tensor]:
    """``{root position: the drafter's logits there}`` for every draft of one batch-1 generate call (the
    root's next-token logits of a cached drafter, the block's logits of DFlash)."""
    seen: dict[int, torch.Tensor] = {}

    def recording(original, pos_of):
        def wrapped(self, *args):
            out = original(self, *args)
            seen[pos_of(self, *args)] = (out[0] if isinstance(out, tuple) else out).clone()
            return out

        return wrapped

    def cached_pos(self):
        seg = self.seg
        return int(seg.positions[0, seg.valid[0]].max()) - self.offset

    monkeypatch.setattr(CachedProposer, "_feed_segment", recording(CachedProposer._feed_segment, cached_pos))
    monkeypatch.setattr(
        DFlashProposer,
        "_block_logits",
        recording(DFlashProposer._block_logits, lambda self, root, pos: int(pos)),
    )
    dec.generate(ids, max_new_tokens=NEW)
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("name", ["eagle-tree", "eagle3-tree", "draft_model", "dflash"])
def test_a_drafter_that_caught_up_drafts_what_it_would_have(name, tiny_target, batch, monkeypatch):  # noqa: F811
    """After plain steps the proposer feeds the skipped entries at once: its logits at a position equal those
    of a run that drafted at every step and reached the same position."""
    model, _ = tiny_target
    head_cfg, options = DRAFTERS[name]
    torch.manual_seed(1)
    drafter = build_drafter(head_cfg, model)
    with torch.no_grad():  # larger random weights: every input, context included, moves the logits
        for p in drafter.parameters():
            if p.dtype.is_floating_point and p.requires_grad:
                p.normal_(0.0, 0.3)
    ids = batch[0][:1]
    always = _recorded_drafts(SpeculativeDecoder(model, drafter, **options), ids, monkeypatch)
    skipping = _recorded_drafts(
        _scripted(SpeculativeDecoder(model, drafter, adaptive=True, **options), "spps"), ids, monkeypatch
    )
    shared = set(always) & set(skipping)
    assert [p for p in shared if p != min(skipping)], "no position drafted by both runs after a skipped step"
    for pos in shared:
        torch.testing.assert_close(skipping[pos], always[pos], atol=1e-2, rtol=1e-3)


def test_perfect_drafter_is_accepted_whole_after_skipped_steps(tiny_target, batch):  # noqa: F811
    model, _ = tiny_target
    dec = _scripted(SpeculativeDecoder(model, model, depth=3, adaptive=True), "sppsps")
    one, _ = _check(dec, tiny_target, batch)
    assert one.stats.plain_steps > 0
    assert all(rate == 1.0 for rate in one.stats.acceptance_by_position)


def test_gate_options(tiny_target):
    model, _ = tiny_target
    drafter = build_drafter({"type": "eagle"}, model)
    assert SpeculativeDecoder(model, drafter, depth=2).gate(1) is None  # a forced tree: as asked
    assert SpeculativeDecoder(model, drafter, depth=2, adaptive=True).gate(1) is not None
    assert SpeculativeDecoder(model, drafter, adaptive=False).gate(1) is None
    dec = SpeculativeDecoder(model, drafter, depth=2, adaptive=True)
    assert dec.gate(2) is dec.gate(2) and dec.gate(1) is not dec.gate(2)  # per batch size, kept across calls


def test_report_shows_the_drafted_acceptance_beside_the_plain_steps():
    from selfspec.decode.bench.render import tau_cell

    row = {
        "mean_accepted_tokens": 1.19,
        "plain_steps": 515,
        "decoder_steps": 617,
        "decoder_mean_accepted_tokens": 2.1,
    }
    assert tau_cell(row) == "1.19 (2.10 drafted)"
    assert tau_cell({**row, "plain_steps": 0}) == "1.19"


@pytest.mark.parametrize("pattern", ["ps", "sp"])
def test_sampling_with_skipped_drafts_follows_the_target(pattern):
    """Unseeded sampling runs the gate: a plain step then a drafted one (or the reverse) keeps the target's law."""
    from tests.decode.test_sampling import _assert_follows_target, _tiny_llama

    target, draft = _tiny_llama(0), _tiny_llama(1)
    dec = SpeculativeDecoder(target, draft, depth=3, topk=3, total_tokens=8, adaptive=True)
    dec._gates[3000] = ScriptedGate(pattern)
    _assert_follows_target(dec, target, seed=None)


def test_seeded_sampling_never_adapts(tiny_target):
    model, _ = tiny_target
    dec = SpeculativeDecoder(model, model, depth=2, adaptive=True)
    dec._gates[1] = ScriptedGate("p")  # would leave every step plain
    ids = torch.tensor([[5, 9, 11, 3]])
    res = dec.generate(ids, max_new_tokens=8, temperature=0.8, seed=7)
    assert res.stats.plain_steps == 0
    assert dec.generate(ids, max_new_tokens=8).stats.plain_steps > 0  # greedy runs the gate
