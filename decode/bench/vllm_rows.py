"""Bench rows ``vllm`` and ``vllm+drafter:<label>``: what a deployment in vLLM gets, beside selfspec's decoder.

``methods=[...,vllm,vllm+drafter]`` where vLLM is importable (its own venv: README, "vLLM"). The target runs in
vLLM in the bench's dtype, greedy, one prompt at a time, interleaved with the other methods like every row; an
EAGLE-3 drafter is exported in the speculators format and loaded with ``speculative_config`` (a chain of
``decode.depth`` tokens, default 3). vLLM's engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
so an idle engine does not poll the CPU while the other rows are timed. Target forwards come from vLLM's
spec-decode counters: one prefill plus one per draft round (one per token without a drafter).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

VLLM_METHODS = ("vllm", "vllm+drafter")
_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def vllm_rows(
    target: PreTrainedModel, drafters: dict[str, Any], methods: Sequence[str], depth: int | None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``{row: {kind: "vllm", fn}}`` for the vLLM methods asked, and ``{row: why skipped}``."""
    asked = [m for m in methods if m in VLLM_METHODS]
    if not asked:
        return {}, {}
    if importlib.util.find_spec("vllm") is None:
        why = "vLLM is not importable here (its own venv: README, section vLLM)"
        return {}, {m: why for m in asked}
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from selfspec.decode.bench.methods import drafter_type_of

    base = {
        "model": str(target.config._name_or_path),
        "dtype": _DTYPES.get(str(target.dtype), "auto"),
        "enforce_eager": True,
        "seed": 0,
        "max_model_len": 2048,
        "disable_log_stats": False,
    }
    rows, skipped = {}, {}
    if "vllm" in asked:
        rows["vllm"] = {"kind": "vllm", "method": "vllm", "fn": _generate_fn(_llm(base))}
    for label, drafter in drafters.items() if "vllm+drafter" in asked else ():
        family = drafter_type_of(drafter)
        if family != "eagle3" or not isinstance(drafter, (str, Path)):
            skipped[f"vllm+drafter:{label}"] = f"{family}: the vLLM row runs EAGLE-3 drafter folders"
            continue
        from selfspec.heads.format_export import export

        k = int(depth or 3)
        folder = export(
            drafter, "speculators", Path(tempfile.mkdtemp(prefix="selfspec-vllm-")), speculative_tokens=k
        )
        spec = {"method": "eagle3", "model": str(folder), "num_speculative_tokens": k}
        rows[f"vllm+drafter:{label}"] = {
            "kind": "vllm",
            "method": "vllm+drafter",
            "drafter_type": family,
            "drafter_path": str(drafter),
            "fn": _generate_fn(_llm({**base, "speculative_config": spec})),
        }
    return rows, skipped


def _llm(kwargs: dict[str, Any]) -> Any:
    from vllm import LLM

    logger.info("starting vLLM for the bench: %s", kwargs)
    return LLM(**kwargs)


def _counters(llm: Any) -> tuple[int, list[int]]:
    drafts, per_pos = 0, []
    for m in llm.get_metrics():
        if m.name == "vllm:spec_decode_num_drafts":
            drafts = int(m.value)
        elif m.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            per_pos = [int(v) for v in m.values]
    return drafts, per_pos


def _generate_fn(llm: Any):
    """A bench method returning a ready ``PromptRun`` (``measure`` passes vLLM rows through)."""
    from vllm import SamplingParams

    from selfspec.decode.bench.baselines import PromptRun

    def run(prompt: list[int], max_new_tokens: int) -> PromptRun:
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        drafts0, pos0 = _counters(llm)
        t0 = time.perf_counter()
        (out,) = llm.generate([{"prompt_token_ids": list(prompt)}], params, use_tqdm=False)
        wall = time.perf_counter() - t0
        drafts1, pos1 = _counters(llm)
        new = list(out.outputs[0].token_ids)
        drafts = drafts1 - drafts0
        accepted = [b - a for a, b in zip(pos0 or [0] * len(pos1), pos1, strict=True)]
        reached = [drafts] + accepted[:-1] if accepted else []  # a round reaches position k+1 if k accepted
        forwards = 1 + drafts if drafts else len(new)
        return PromptRun(
            new_tokens=new, wall_time_s=wall, target_forwards=forwards, drafted=reached, accepted=accepted
        )

    return run
