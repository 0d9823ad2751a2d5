"""The acceptance report: selfspec's decoder against what a user would pick instead, on held-out prompts.

``run_report`` runs every method on every prompt, interleaved prompt by prompt (the order rotates, so no method
always runs first) after a warm-up, and writes ``bench.json``, ``bench.md`` and ``acceptance.png``. The numbers:
mean accepted tokens = new tokens per target forward (all methods counted the same way, see baselines.py),
acceptance by position, tokens/s, speed-up over the target alone measured in the same run, and whether every
output equals the target's greedy output token for token. ``python decode/bench/run.py`` is its command line;
``train/run.py`` calls it at its end.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selfspec.config import JobConf, TargetConf, register_core
from selfspec.decode.bench.baselines import PromptRun, eos_ids_of, measure
from selfspec.decode.bench.lossless import block_noise, first_divergence, near_tie, reference_margins
from selfspec.decode.bench.methods import DEFAULT_METHODS, build_methods, labelled
from selfspec.decode.bench.prompts import prompts_from_split
from selfspec.decode.bench.render import render_markdown, write_outputs
from selfspec.utils import SelfspecError, dtype_name

logger = logging.getLogger("selfspec.decode.bench.report")


@dataclass
class DecodeOptionsConf:
    """``SpeculativeDecoder`` options; null keeps the decoder's per-drafter default."""

    depth: int | None = None  # draft levels
    topk: int | None = None  # children per expanded node (1: a chain)
    total_tokens: int | None = None  # draft tree size, root included
    tree: Any = None  # auto (null): sized from measured costs | true: the default tree | false: a chain
    medusa_choices: Any = None  # Medusa tree: paths of top-k choice indices
    adaptive: bool | None = None  # null: on for the cost model's tree (plain steps while drafting loses)


@dataclass
class BenchJobConf(JobConf):
    """``python decode/bench/run.py drafter=PATH``; ``drafter=[P1,P2]`` compares several drafters in one run."""

    drafter: Any = MISSING  # a drafter folder, or a list of them
    prompts: str | None = None  # JSONL of {"messages": [...]} or {"prompt": "..."}; default: the eval split
    dataset: str | None = None  # a data-step DatasetDict folder; default: the one the drafter was trained on
    num_prompts: int | None = 16  # null: every prompt
    max_new_tokens: int = 128
    warmup: int = 1
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    prompt_lookup_num_tokens: int = 10
    fp32_prompts: int = 2  # CPU, non-fp32 target: the target alone in fp32 too, paired, on this many prompts
    decode: DecodeOptionsConf = field(default_factory=DecodeOptionsConf)
    target: TargetConf = field(
        default_factory=lambda: TargetConf(name_or_path="")
    )  # "": the drafter's target


def register_bench(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    register_core(cs)
    cs.store(name="bench_schema", node=BenchJobConf)


# ---------------------------------------------------------------------------------------------------------
# The report.


def run_report(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    drafters: Any,
    prompts: Any,
    output_dir: str | Path | None,
    *,
    max_new_tokens: int = 128,
    num_prompts: int | None = 16,
    methods: Sequence[str] = DEFAULT_METHODS,
    warmup: int = 1,
    decoder_options: Mapping[str, Any] | None = None,
    prompt_lookup_num_tokens: int = 10,
    extra: Mapping[str, Any] | None = None,
    fp32_prompts: int = 2,
) -> dict[str, Any]:
    """Benchmark ``drafters`` against the target alone and transformers' baselines; write and return the report.

    drafters: a Drafter (bound to ``target``), a drafter folder, or a list / ``{label: ...}`` dict of them.
    prompts: token-id lists (chat template applied), or a data-step split (``datasets.Dataset`` with columns
      ``input_ids`` and ``prompt_len``, e.g. ``DatasetDict["eval"]``).
    output_dir: where bench.json, bench.md and acceptance.png go (None: write nothing).
    num_prompts: the first N prompts (None: all). warmup: prompts run untimed first, every method.
    methods: a subset of ``METHODS`` (vllm and vllm+drafter where vLLM is importable); the target always runs, since
      speed-ups and the identical-output check are measured against it.
    decoder_options: keyword arguments of ``SpeculativeDecoder``. extra: copied into ``bench.json["settings"]``.
    fp32_prompts: on a CPU with a non-fp32 target, the target alone in fp32 on this many prompts too (paired
      with the target's own runs), so the report states what the dtype brings.
    Returns the ``bench.json`` dict.
    """
    ids = _prompt_ids(prompts, num_prompts)
    rows, skipped = build_methods(
        target, tokenizer, labelled(drafters), methods, decoder_options or {}, prompt_lookup_num_tokens
    )
    eos = eos_ids_of(target) or {tokenizer.eos_token_id}
    trees = {name: row["decoder"].tree_choice() for name, row in rows.items() if "decoder" in row}  # untimed
    for prompt in ids[: max(warmup, 0)]:  # warm-up: allocator, kernels, lazy inits; not timed
        for row in rows.values():
            measure(row["kind"], row["fn"], target, prompt, min(max_new_tokens, 32), eos)
    runs: dict[str, list[PromptRun]] = {name: [] for name in rows}
    names = list(rows)
    for i, prompt in enumerate(ids):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            runs[name].append(
                measure(rows[name]["kind"], rows[name]["fn"], target, prompt, max_new_tokens, eos)
            )
        logger.info(
            "prompt %d/%d (%d tokens): %s",
            i + 1,
            len(ids),
            len(prompt),
            ", ".join(
                f"{n} {len(runs[n][-1].new_tokens) / runs[n][-1].wall_time_s:.1f} tok/s" for n in names
            ),
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    exactness = _exactness(target, ids, runs, pad)
    report = {
        "schema_version": 2,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": _target_info(target),
        "settings": {
            "max_new_tokens": max_new_tokens,
            "num_prompts": len(ids),
            "warmup": warmup,
            "prompt_lookup_num_tokens": prompt_lookup_num_tokens,
            "decoder_options": dict(decoder_options or {}),
            "batch_size": 1,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            **dict(extra or {}),
        },
        "dtype": _dtype_note(target, ids[:fp32_prompts], max_new_tokens, pad, exactness["noise"]),
        "methods": [
            {
                **_summarise(name, rows[name], runs[name], runs["target"]),
                **exactness["methods"].get(name, {}),
                **_tree(trees.get(name)),
            }
            for name in names
        ],  # fmt: skip
        "skipped": skipped,
    }
    if output_dir is not None:
        write_outputs(report, output_dir)
    return report


def _tree(choice: Any) -> dict[str, Any]:
    """The tree a selfspec row drafted, and what the cost model predicted for it."""
    if choice is None:
        return {}
    return {"tree": choice.describe(), "tree_depth": choice.depth, "predicted_speedup": choice.speedup,
            "predicted_tokens_per_step": choice.tokens_per_step}  # fmt: skip


def _exactness(
    target: Any, ids: list[list[int]], runs: dict[str, list[PromptRun]], pad: int
) -> dict[str, Any]:
    """Per method and prompt: identical to the target's output, or the first divergence with the reference's
    top-2 logit margin there, judged against the block-vs-single noise measured on the same outputs."""
    base = runs["target"]
    noise = block_noise(target, [p + r.new_tokens for p, r in zip(ids[:4], base, strict=False)],
                        [len(p) for p in ids[:4]])  # fmt: skip
    margins: dict[int, list[float]] = {}
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        divs = []
        for j, (r, b) in enumerate(zip(rs, base, strict=True)):
            i = first_divergence(r.new_tokens, b.new_tokens)
            if i is None:
                continue
            if j not in margins:  # untimed: generate again, keeping the logits of each step
                margins[j] = reference_margins(target, ids[j], b.new_tokens, pad)
            m = margins[j][i] if i < len(margins[j]) else None
            divs.append({"prompt": j, "index": i, "margin": m, "near_tie": near_tie(m, noise)})
        out[name] = {"divergences": divs, "near_ties_only": all(d["near_tie"] for d in divs)}
    return {"noise": noise, "methods": out}


def _dtype_note(target: Any, prompts: list[list[int]], max_new: int, pad: int, noise: Any) -> dict[str, Any]:
    """The target's dtype, the block-vs-single noise, and (CPU, non-fp32) the target alone in fp32 as well."""
    note = {"dtype": dtype_name(target.dtype), "noise_max_abs_logit": noise.max_abs,
            "noise_positions": noise.positions, "noise_argmax_flips": noise.argmax_flips}  # fmt: skip
    if target.dtype == torch.float32 or target.device.type != "cpu" or not prompts:
        return note
    fp32 = copy.deepcopy(target).float()
    x = torch.tensor([prompts[0]], device=target.device)
    fp32.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, pad_token_id=pad)
    times = {"own": 0.0, "fp32": 0.0}  # the fp32 copy warmed up above (the target was, with every method)
    tokens = 0
    for prompt in prompts:  # paired, alternating which runs first
        for key, model in (
            (("own", target), ("fp32", fp32)) if len(prompt) % 2 else (("fp32", fp32), ("own", target))
        ):
            x = torch.tensor([prompt], device=target.device)
            t0 = time.perf_counter()
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, min_new_tokens=max_new,
                           do_sample=False, pad_token_id=pad)  # fmt: skip
            times[key] += time.perf_counter() - t0
        tokens += max_new
    del fp32
    note.update(target_tokens_per_s=tokens / times["own"], fp32_tokens_per_s=tokens / times["fp32"],
                over_fp32=times["fp32"] / times["own"], paired_prompts=len(prompts))  # fmt: skip
    return note


def _prompt_ids(prompts: Any, num_prompts: int | None) -> list[list[int]]:
    if hasattr(prompts, "column_names"):
        ids = prompts_from_split(prompts, num_prompts)
    else:
        ids = [[int(t) for t in p] for p in (prompts if num_prompts is None else list(prompts)[:num_prompts])]
    if not ids or any(len(p) == 0 for p in ids):
        raise SelfspecError(
            "the report needs at least one non-empty prompt: check the eval split or prompts file"
        )
    return ids


def _target_info(target: PreTrainedModel) -> dict[str, Any]:
    return {
        "name_or_path": str(getattr(target.config, "_name_or_path", "")),
        "dtype": str(target.dtype),
        "device": str(target.device),
        "num_parameters": sum(p.numel() for p in target.parameters()),
    }


def _summarise(
    name: str, row: dict[str, Any], runs: list[PromptRun], base: list[PromptRun]
) -> dict[str, Any]:
    """One row of the report: totals over prompts, rates, and the identical-output check against the target."""
    new = sum(len(r.new_tokens) for r in runs)
    wall = sum(r.wall_time_s for r in runs)
    fwd = sum(r.target_forwards for r in runs)
    base_tps = sum(len(r.new_tokens) for r in base) / max(sum(r.wall_time_s for r in base), 1e-9)
    depth = max((len(r.drafted) for r in runs), default=0)
    drafted = [sum(r.drafted[k] for r in runs if k < len(r.drafted)) for k in range(depth)]
    accepted = [sum(r.accepted[k] for r in runs if k < len(r.accepted)) for k in range(depth)]
    mismatched = sum(r.new_tokens != b.new_tokens for r, b in zip(runs, base, strict=True))
    dec = [r.decoder_mean_accepted for r in runs if r.decoder_mean_accepted is not None]
    tps = new / max(wall, 1e-9)
    return {
        "name": name,
        "method": row["method"],
        "drafter_type": row.get("drafter_type"),
        "drafter_path": row.get("drafter_path"),
        "mean_accepted_tokens": new / max(fwd, 1),
        "acceptance_by_position": [a / d if d else None for a, d in zip(accepted, drafted, strict=True)]
        if row["kind"] != "target"
        else None,
        "drafted_by_position": drafted,
        "accepted_by_position": accepted,
        "decoder_mean_accepted_tokens": sum(dec) / len(dec) if dec else None,
        "decoder_steps": sum(r.steps for r in runs),
        "plain_steps": sum(r.plain_steps for r in runs),
        "tokens_per_s": tps,
        "speedup": tps / base_tps if base_tps else None,
        "identical": mismatched == 0,
        "mismatched_prompts": mismatched,
        "new_tokens": new,
        "target_forwards": fwd,
        "wall_time_s": wall,
        "per_prompt": [
            {
                "new_tokens": len(r.new_tokens),
                "wall_time_s": round(r.wall_time_s, 4),
                "target_forwards": r.target_forwards,
            }
            for r in runs
        ],
    }


def print_table(report: dict[str, Any]) -> None:
    """The markdown table on stdout (the one output of the bench that is not a log line)."""
    print(render_markdown(report))  # noqa: T201 — the table is the product, not a log
