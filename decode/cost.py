"""What a decoding step costs on this machine: the verification curve and the drafter's draft costs, measured once.

A speculative step costs one target forward over the N tree nodes (``verify_ms(N)``), the drafter's work for a
tree of depth D and width K (``draft_ms(D, K)``) and the decoder's own bookkeeping: ``overhead_ms`` in every
step, plus ``spec_overhead_ms(N)`` in a speculative one (masks, the acceptance walk, moving accepted entries
into place, the proposer's update), measured as a whole speculative step's median time minus its parts. Without
that last term the planner took trees that lost on a 2-core fp32 CPU (README, Results). Whether a
tree pays depends on all three, and they depend on the hardware: on a GPU, or on a CPU with native bf16,
verifying 16 nodes costs about 1.4x one token; in fp32 on 2 CPU cores about 2x. So they are measured, through
the decoder's own code path (the same KV cache, masks and proposer), per (device, target, dtype, drafter
architecture), and cached as JSON under ``$SELFSPEC_HOME/costs``. A corrupt or foreign cache file is
remeasured, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfspec.target import selfspec_home, weights_fingerprint
from selfspec.utils import atomic_write_json

logger = logging.getLogger(__name__)

# 3: the lm_head as W @ x.T (own_head); 4: verify timed in two passes, smaller drafts capped by larger ones
SCHEMA = 4
VERIFY_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
DEPTHS = (1, 2, 3, 4, 5, 6, 7, 8)
WIDTHS = (1, 2, 4, 8)
CONTEXT = 256  # cached tokens before the measured forwards: a typical prompt plus some answer


@dataclass
class CostCurve:
    """Milliseconds on one machine. ``draft_ms`` keys are ``"D,K"`` (depth, width) or ``"*"`` when the
    drafter's cost does not depend on the tree (Medusa: all heads in one matmul)."""

    key: dict[str, Any]
    verify_ms: dict[int, float] = field(default_factory=dict)
    draft_ms: dict[str, float] = field(default_factory=dict)
    overhead_ms: float = 0.0
    spec_overhead_ms: dict[int, float] = field(default_factory=dict)  # tree nodes -> extra ms of a spec step

    def spec_overhead(self, n: int) -> float:
        """A speculative step's bookkeeping beyond verify + draft, interpolated in the node count."""
        if not self.spec_overhead_ms:
            return 0.0
        xs = sorted(self.spec_overhead_ms)
        if n <= xs[0] or len(xs) == 1:
            return self.spec_overhead_ms[xs[0]] if n <= xs[0] else self.spec_overhead_ms[xs[-1]]
        if n >= xs[-1]:
            return self.spec_overhead_ms[xs[-1]]
        hi = next(x for x in xs if x >= n)
        lo = max(x for x in xs if x < n)
        w = (n - lo) / (hi - lo)
        return (1 - w) * self.spec_overhead_ms[lo] + w * self.spec_overhead_ms[hi]

    def verify(self, n: int) -> float:
        """Linear interpolation between the measured sizes (beyond the largest: linear extrapolation)."""
        xs = sorted(self.verify_ms)
        if n in self.verify_ms:
            return self.verify_ms[n]
        hi = next((x for x in xs if x > n), xs[-1])
        lo = max((x for x in xs if x < n), default=xs[0])
        if hi == lo:
            lo = xs[-2]
        slope = (self.verify_ms[hi] - self.verify_ms[lo]) / (hi - lo)
        return self.verify_ms[lo] + slope * (n - lo)

    def draft(self, depth: int, width: int) -> float:
        if "*" in self.draft_ms:
            return self.draft_ms["*"]
        if depth <= 0:
            return 0.0
        k = min((w for w in WIDTHS if w >= width), default=WIDTHS[-1])
        d = min(depth, DEPTHS[-1])
        base = self.draft_ms[f"{d},{k}"]
        if depth > d:  # deeper than measured: one more level per extra depth
            base += (depth - d) * (base - self.draft_ms[f"{d - 1},{k}"])
        return base

    def plain_ms(self) -> float:
        """One token without speculation, through the same loop."""
        return self.verify(1) + self.overhead_ms


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 2, stat: str = "min") -> float:
    """Wall time of ``fn`` in ms: the minimum (the least disturbed estimate of a part's cost on a shared
    machine) or the median (``stat="median"``, what a whole step costs in a run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return (min(times) if stat == "min" else sorted(times)[len(times) // 2]) * 1e3


def cost_key(target: Any, drafter_kind: str, drafter_sizes: dict[str, Any]) -> dict[str, Any]:
    """What the costs depend on: machine, software, target weights and dtype, drafter architecture."""
    weight = target.get_output_embeddings().weight
    device = weight.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "schema": SCHEMA,
        "device": f"{device.type}:{name}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "target": weights_fingerprint(target),
        "dtype": str(weight.dtype),
        "drafter": drafter_kind,
        "drafter_sizes": drafter_sizes,
    }


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return selfspec_home() / "costs" / f"{key['drafter']}-{digest}.json"


def load_curve(key: dict[str, Any]) -> CostCurve | None:
    """The cached curve for ``key``; None (and a warning for a damaged file) when there is none to trust."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        curve = CostCurve(
            key=raw["key"],
            verify_ms={int(k): float(v) for k, v in raw["verify_ms"].items()},
            draft_ms={str(k): float(v) for k, v in raw["draft_ms"].items()},
            overhead_ms=float(raw["overhead_ms"]),
            spec_overhead_ms={int(k): float(v) for k, v in raw.get("spec_overhead_ms", {}).items()},
        )
        if curve.key != key or 1 not in curve.verify_ms or not curve.draft_ms:
            raise ValueError("it was measured for another machine, target or drafter")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning("ignoring the cost cache %s (%s): measuring again", path, e)
        return None
    return curve


def save_curve(curve: CostCurve) -> Path:
    path = cache_path(curve.key)
    atomic_write_json(path, asdict(curve))
    return path
