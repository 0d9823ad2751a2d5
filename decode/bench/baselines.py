"""The methods the benchmark compares, each run one prompt at a time with its target forwards counted.

Methods: the target alone (``target.generate`` greedy), transformers' assisted generation with a draft model
(``assistant_model=``), transformers' prompt-lookup decoding (``prompt_lookup_num_tokens=``), and selfspec's
``SpeculativeDecoder``. Every method is measured the same way: a forward pre-hook on the target's base model
(``target.base_model``, which both ``target(...)`` and a direct ``target.model(...)`` call go through) records
each target forward's cache length and input length. From those records the transformers methods also yield
per-round draft and accept counts, since their rounds follow one pattern: the input is the last accepted token
(not yet cached) followed by the candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel


@dataclass
class PromptRun:
    """One method on one prompt."""

    new_tokens: list[int]  # generated ids, cut after the first EOS and at max_new_tokens
    wall_time_s: float
    target_forwards: int
    # drafted[k]: rounds that reached draft position k+1 (all earlier drafts accepted, a (k+1)-th one drafted);
    # accepted[k]: rounds that accepted it. Floats only when rebuilt from the decoder's rates.
    drafted: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    decoder_mean_accepted: float | None = None  # the decoder's own stat, kept for cross-checking
    steps: int = 0  # the decoder's steps after the prefill, and of them those its adaptive gate left plain
    plain_steps: int = 0


@dataclass
class ForwardRecord:
    start: int  # tokens already in the target's KV cache
    length: int  # tokens fed in this forward


@contextmanager
def record_target_forwards(target: PreTrainedModel) -> Iterator[list[ForwardRecord]]:
    """Record every forward of ``target``'s base model while the context is open."""
    records: list[ForwardRecord] = []

    def pre_hook(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        cache = kwargs.get("past_key_values")
        start = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        records.append(ForwardRecord(start=start, length=int(x.shape[1]) if x is not None else 0))

    handle = target.base_model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield records
    finally:
        handle.remove()


def rounds_from_records(records: list[ForwardRecord], prompt_len: int) -> list[tuple[int, int]]:
    """``(drafted, accepted)`` per verification round of a transformers assisted/prompt-lookup run.

    Before round i the sequence holds L_i tokens (L_0 = prompt_len; afterwards L_i = start_i + 1, the last
    accepted token being the only uncached one); the round feeds start_i..start_i+length_i-1, so it drafted
    q_i = start_i + length_i - L_i tokens and accepted L_{i+1} - L_i - 1 of them. The last round is left out:
    max_new_tokens or EOS may cut it short, which is not a rejection.
    """
    lens = [prompt_len] + [r.start + 1 for r in records[1:]]
    rounds = []
    for i in range(len(records) - 1):
        drafted = max(records[i].start + records[i].length - lens[i], 0)
        accepted = min(max(lens[i + 1] - lens[i] - 1, 0), drafted)
        rounds.append((drafted, accepted))
    return rounds


def position_counts(rounds: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Per draft position k (0-based): rounds that reached it (drafted a (k+1)-th token with the k before it all
    accepted), and rounds that accepted it. accepted/reached is the conditional acceptance the decoder reports."""
    depth = max((d for d, _ in rounds), default=0)
    reached = [sum(d > k and a >= k for d, a in rounds) for k in range(depth)]
    accepted = [sum(a > k for _, a in rounds) for k in range(depth)]
    return reached, accepted


def trim_new_tokens(new: list[int], eos_ids: set[int], max_new_tokens: int) -> list[int]:
    """Cut at max_new_tokens and after the first EOS, so outputs compare token for token."""
    new = new[:max_new_tokens]
    for i, tok in enumerate(new):
        if tok in eos_ids:
            return new[: i + 1]
    return new


def eos_ids_of(target: PreTrainedModel) -> set[int]:
    eos = target.generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# A method maps a (1, T) prompt to whatever it returns; ``measure`` extracts tokens and stats from it.
Generate = Callable[[torch.Tensor, int], Any]


def hf_generate_fn(target: PreTrainedModel, pad_token_id: int | None, **extra: Any) -> Generate:
    """``target.generate`` greedy, optionally with ``assistant_model=`` or ``prompt_lookup_num_tokens=``."""

    def run(input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        return target.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id,
            **extra,
        )

    return run


def selfspec_generate_fn(decoder: Any) -> Generate:
    def run(input_ids: torch.Tensor, max_new_tokens: int) -> Any:
        return decoder.generate(input_ids, max_new_tokens=max_new_tokens, temperature=0.0)

    return run


@torch.no_grad()
def measure(
    kind: str, fn: Generate, target: PreTrainedModel, prompt: list[int], max_new_tokens: int, eos: set[int]
) -> PromptRun:
    """Run one method on one prompt: wall time, new tokens, target forwards, per-position acceptance.

    ``kind`` is ``target``, ``hf_speculative`` (assisted or prompt lookup: acceptance read from the forward
    records) or ``selfspec`` (acceptance from the decoder's stats).
    """
    if kind == "vllm":  # vLLM runs its own copy of the target and counts its own forwards (vllm_rows.py)
        run = fn(prompt, max_new_tokens)
        run.new_tokens = trim_new_tokens(run.new_tokens, eos, max_new_tokens)
        return run
    device = target.device
    input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
    with record_target_forwards(target) as records:
        _sync(device)
        t0 = time.perf_counter()
        out = fn(input_ids, max_new_tokens)
        _sync(device)
        wall = time.perf_counter() - t0
    sequences = out.sequences if hasattr(out, "sequences") else out
    new = trim_new_tokens(sequences[0, len(prompt) :].tolist(), eos, max_new_tokens)
    run = PromptRun(new_tokens=new, wall_time_s=wall, target_forwards=len(records))
    if kind == "hf_speculative":
        run.drafted, run.accepted = position_counts(rounds_from_records(records, len(prompt)))
    elif kind == "selfspec":
        _fill_decoder_stats(run, out.stats)
    return run


def _fill_decoder_stats(run: PromptRun, stats: Any) -> None:
    """Per-position counts from the decoder's stats."""
    run.decoder_mean_accepted = float(stats.mean_accepted_tokens)
    if run.target_forwards == 0:  # the decoder bypassed the hooked module: trust its own count
        run.target_forwards = int(stats.target_forwards)
    run.drafted, run.accepted = list(stats.offered_by_position), list(stats.accepted_by_position)
    run.steps, run.plain_steps = int(stats.steps) - 1, int(stats.plain_steps)  # steps counts the prefill
