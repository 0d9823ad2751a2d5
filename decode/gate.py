"""The adaptive gate: speculate only while it measurably pays, step by step.

The cost model (``plan.py``) chooses a tree from costs measured once and acceptance recorded at training time.
Both can be wrong for the run at hand: acceptance falls on prompts unlike the training ones, step costs move
with the context length and with whatever else runs on the machine, and on a 2-core fp32 CPU the planner's
predicted 1.07-1.14x came out at 0.88-1.03x (README, Results). So a decoder using the cost model's tree also
measures, while it decodes, what a speculative step and a plain step really cost and yield, and takes the
faster: the spirit of dynamic speculation lengths (e.g. DISCO, Mamou et al. 2024, arXiv:2405.04304) and of
serving engines that turn speculation off when it does not pay, reduced to the one choice a CPU needs
(speculate with the planned tree, or not).

Each step's wall time (draft + verify + commit, read after the step's one host sync) and its new tokens per
live row go into exponentially weighted estimates per arm, seeded with the cost model's prediction. Tokens per
speculative step are the noisy figure (1, 2 or 3 from one step to the next), so they get the longer memory
(about 20 steps against 10 for the times): with one memory of 5 steps for both, a run of rejections flipped the
gate to plain decoding, and since the losing arm is only probed, it stayed there, leaving 399 of 734 steps plain
on a drafter that paid 1.23x without the gate (``scripts/gate_ab.py``, README "The adaptive gate's memory"). The
better arm runs; the other is probed now and then so its estimate stays current, more often when the two are
close (a wrong choice then costs little) and at most about 1% of the time when they are far apart. Plain steps
still give the target's features to the proposer, which catches up at its next draft, so the choice changes
speed only: every output is the same as with speculation on (greedy) or has the same distribution (sampling).

The arms are compared by their relative cost, measured where both are current: each time the gate changes arm
(a probe, or a switch), the step just run is set against the step before it, of the other arm. A slow stretch of
the host slows both arms alike and leaves that ratio alone. The gate's first rule compared the two running
estimates, so after a slow stretch a fresh plain estimate met a speculative one last measured in it, and each
probe moved that stale estimate by a tenth only: in a seeded simulation (tests/decode/test_gate.py) it then
speculated in 38-73% of the later steps, against at least 94% now. It is the likely cause of a quick-start report
that left 313 of 420 steps plain (1.08x) where a rerun a minute later left 17 of 269 (1.40x). On the machine the
two rules did not rank apart within its noise (``scripts/gate_ab.py --contend``, README "Acceptance at the EAGLE
papers' tree size, and the gate beside a busy core").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROBE_MIN, PROBE_MAX = 8, 128  # steps between probes of the losing arm
DECAY_MS = 0.9  # weight of the old estimate at each new measurement of an arm's step time
DECAY_TOKENS = 0.95  # ... and of a speculative step's new tokens (the noisier figure)
DECAY_RELATIVE = 0.7  # ... and of the relative cost, measured at each change of arm (probes are rare)


@dataclass
class SpeculationGate:
    """Estimates: ``plain_ms`` a plain step and ``spec_ms`` a speculative one (each arm's running time),
    ``relative`` the speculative step's cost in plain steps (measured at each change of arm) and ``spec_tokens``
    its new tokens per live row. Seed them with the cost model's prediction; ``record`` every step."""

    plain_ms: float
    spec_ms: float
    spec_tokens: float
    relative: float = math.nan
    steps: int = 0
    decay_ms: float = DECAY_MS
    decay_tokens: float = DECAY_TOKENS
    decay_relative: float = DECAY_RELATIVE
    last_plain: int = 0
    last_spec: int = 0
    last_ms: float = math.nan  # the step just before, of whichever arm

    def __post_init__(self) -> None:
        if math.isnan(self.relative) and self.plain_ms > 0 and self.spec_ms > 0:
            self.relative = self.spec_ms / self.plain_ms

    @classmethod
    def from_prediction(cls, plain_ms: float, spec_ms: float, tokens_per_step: float) -> SpeculationGate:
        """Seeded with the cost model's figures; without them (a forced tree the model cannot price) both
        arms start unknown and each takes its first measurement as is."""
        if plain_ms > 0 and spec_ms > 0:
            return cls(plain_ms, spec_ms, max(tokens_per_step, 1.0))
        return cls(math.nan, math.nan, math.nan)

    def ratio(self) -> float:
        """Estimated speed of speculation over plain decoding (new tokens per unit of time, both arms); an arm
        not yet measured counts as the faster one, so that each is tried."""
        if math.isnan(self.spec_ms):
            return math.inf
        if math.isnan(self.plain_ms):
            return 0.0
        return self.spec_tokens / self.relative

    def probe_every(self) -> int:
        """Steps between probes of the losing arm: a probe costs about ``1 - min(r, 1/r)`` of a step, kept
        near 1% of the steps, within [PROBE_MIN, PROBE_MAX]."""
        r = self.ratio()
        if not 0 < r < math.inf:
            return PROBE_MIN
        loss = 1.0 - min(r, 1.0 / r)
        return int(min(PROBE_MAX, max(PROBE_MIN, math.ceil(100 * loss))))

    def speculate(self) -> bool:
        """Whether the next step drafts."""
        self.steps += 1
        spec = self.ratio() >= 1.0
        last_other = self.last_plain if spec else self.last_spec
        if self.steps - last_other >= self.probe_every():
            spec = not spec
        return spec

    def record(self, spec: bool, ms: float, tokens_per_row: float) -> None:
        """One measured step of the arm that ran (``tokens_per_row``: new tokens per live row)."""
        changed = (self.last_plain > self.last_spec) if spec else (self.last_spec > self.last_plain)
        if changed and not math.isnan(self.last_ms):  # the other arm ran the step before: the two compare
            rel = ms / self.last_ms if spec else self.last_ms / ms
            self.relative = _blend(self.relative, rel, self.decay_relative)
        self.last_ms = ms
        if spec:
            self.last_spec = self.steps
            self.spec_ms = _blend(self.spec_ms, ms, self.decay_ms)
            self.spec_tokens = _blend(self.spec_tokens, tokens_per_row, self.decay_tokens)
        else:
            self.last_plain = self.steps
            self.plain_ms = _blend(self.plain_ms, ms, self.decay_ms)


def _blend(old: float, new: float, decay: float) -> float:
    """An exponentially weighted estimate after one more measurement; an unknown (NaN) one takes it as is."""
    return new if math.isnan(old) else decay * old + (1 - decay) * new
