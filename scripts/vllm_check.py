"""Serving check: does vLLM accept a selfspec EAGLE-3 drafter as often as selfspec's own decoder does?

    python scripts/vllm_check.py --drafter outputs/eagle3/drafter --out results/vllm/check

Exports the drafter in the speculators format, then on the same prompts (greedy, batch 1, one dtype):
vLLM without the drafter, vLLM with it (``speculative_config`` method eagle3, a chain of ``--k`` tokens), and
selfspec's decoder with the same chain. Reports vLLM's spec-decode metrics (mean accepted length, acceptance
by position) beside selfspec's, and the tokens/s of each. Exits 1 if vLLM's output with the drafter differs from
its output without it (fp32; in bf16 differences are reported), or if vLLM's mean accepted length is more than
``--tolerance`` below selfspec's (the silent collapse an engine-format mismatch causes, vLLM#50158).
Runs in a venv with both vLLM and selfspec (README, "vLLM"); each vLLM run is its own process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("selfspec.vllm_check")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def vllm_run(job: dict) -> dict:
    """One vLLM engine (with or without the drafter) over the prompts, one at a time; in its own process."""
    from vllm import LLM, SamplingParams

    kwargs = {"model": job["target"], "dtype": DTYPES[job["dtype"]], "enforce_eager": True, "seed": 0}
    kwargs.update(max_model_len=job["max_model_len"], disable_log_stats=False)
    if job.get("drafter"):
        kwargs["speculative_config"] = {
            "method": "eagle3",
            "model": job["drafter"],
            "num_speculative_tokens": job["k"],
        }
    llm = LLM(**kwargs)
    params = SamplingParams(max_tokens=job["max_new_tokens"], temperature=0.0)
    llm.generate([{"prompt_token_ids": job["prompts"][0]}], params, use_tqdm=False)  # warm-up
    before = _spec_metrics(llm)
    outputs, seconds = [], 0.0
    for p in job["prompts"]:
        start = time.perf_counter()
        (r,) = llm.generate([{"prompt_token_ids": p}], params, use_tqdm=False)
        seconds += time.perf_counter() - start
        outputs.append(list(r.outputs[0].token_ids))
    after = _spec_metrics(llm)
    spec = {k: (after[k] - before[k]) if k != "per_pos" else None for k in after}
    if after.get("per_pos"):
        spec["per_pos"] = [a - b for a, b in zip(after["per_pos"], before["per_pos"], strict=True)]
    return {"outputs": outputs, "seconds": seconds, "tokens": sum(map(len, outputs)), "spec": spec}


def _spec_metrics(llm) -> dict:
    """vLLM's spec-decode counters (Prometheus names without the ``vllm:`` prefix)."""
    out: dict = {"drafts": 0, "draft_tokens": 0, "accepted": 0, "per_pos": []}
    names = {
        "vllm:spec_decode_num_drafts": "drafts",
        "vllm:spec_decode_num_draft_tokens": "draft_tokens",
        "vllm:spec_decode_num_accepted_tokens": "accepted",
    }
    for m in llm.get_metrics():
        if m.name in names:
            out[names[m.name]] = m.value
        elif m.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            out["per_pos"] = list(m.values)
    return out


def run_vllm(job: dict, work: Path, name: str) -> dict:
    """``vllm_run`` in a fresh process (vLLM's engine core and its memory end with it)."""
    src, dst = work / f"{name}.job.json", work / f"{name}.out.json"
    src.write_text(json.dumps(job))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(src), str(dst)], env=env)
    if proc.returncode != 0 or not dst.exists():
        raise SystemExit(f"the vLLM run '{name}' failed (exit {proc.returncode}); its log is above")
    return json.loads(dst.read_text())


def selfspec_run(drafter: str, prompts: list[list[int]], k: int, dtype: str, max_new: int) -> dict:
    """selfspec's decoder with the same chain, and the target alone through ``generate``, interleaved."""
    import torch

    from selfspec.decode import SpeculativeDecoder

    dec = SpeculativeDecoder.from_pretrained(drafter, dtype=dtype, tree=False, depth=k)
    target = dec.target
    dev = target.get_output_embeddings().weight.device
    outputs, spec_s, base_s, steps, tokens_per_step = [], 0.0, 0.0, 0, 0.0
    offered, accepted = [0] * k, [0] * k
    for i, p in enumerate([prompts[0], *prompts]):  # the first pass warms up
        ids = torch.tensor([p], device=dev)
        start = time.perf_counter()
        res = dec.generate(ids, max_new_tokens=max_new)
        t_spec = time.perf_counter() - start
        start = time.perf_counter()
        target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
        t_base = time.perf_counter() - start
        if i == 0:
            continue
        spec_s, base_s = spec_s + t_spec, base_s + t_base
        s = res.stats
        outputs.append(res.sequences[0, len(p) :].tolist())
        steps, tokens_per_step = steps + s.steps, tokens_per_step + s.mean_accepted_tokens * s.steps
        for j, (o, a) in enumerate(zip(s.offered_by_position, s.accepted_by_position, strict=False)):
            if j < k:
                offered[j], accepted[j] = offered[j] + o, accepted[j] + a
    pad = dec.pad_id
    outputs = [_cut(o, pad, dec.eos_ids) for o in outputs]
    return {
        "outputs": outputs,
        "tokens": sum(map(len, outputs)),
        "seconds": spec_s,
        "target_seconds": base_s,
        "mean_accepted": tokens_per_step / max(steps, 1),
        "by_position": [a / o if o else None for a, o in zip(accepted, offered, strict=True)],
    }


def _cut(ids: list[int], pad: int, eos: list[int]) -> list[int]:
    """A row up to and including its EOS (the rest is padding), as vLLM returns it."""
    end = next((j for j, t in enumerate(ids) if t in eos), None)
    return ids[: end + 1] if end is not None else ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", help="a selfspec EAGLE-3 drafter folder (required)")
    ap.add_argument(
        "--prompts", default="eval", help="eval (the drafter's held-out split), other_kinds, FILE"
    )
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=3, help="draft tokens per step (num_speculative_tokens)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--out", default="outputs/vllm_check")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        src, dst = args.worker
        Path(dst).write_text(json.dumps(vllm_run(json.loads(Path(src).read_text()))))
        return
    if not args.drafter:
        ap.error("--drafter is required: a selfspec EAGLE-3 drafter folder")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from selfspec.decode.bench.prompts import BUILTIN, load_prompts_file, prompts_from_dataset_dir
    from selfspec.decode.bench.setup import dataset_of_drafter, target_of_drafter
    from selfspec.heads.format_export import export
    from selfspec.target import load_target, resolve_target_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target_name = target_of_drafter(args.drafter)
    target_dir = resolve_target_path(target_name)
    if args.prompts == "eval":
        prompts = prompts_from_dataset_dir(dataset_of_drafter(args.drafter), args.num_prompts)
    else:
        _, tok = load_target(target_name, device="cpu", dtype="fp32")
        prompts = load_prompts_file(BUILTIN.get(args.prompts, args.prompts), tok, args.num_prompts)
    spec_dir = export(args.drafter, "speculators", out / "speculators", speculative_tokens=args.k)
    job = {"target": target_dir, "dtype": args.dtype, "prompts": prompts, "k": args.k}
    job.update(max_new_tokens=args.max_new_tokens, max_model_len=2048)
    with tempfile.TemporaryDirectory() as tmp:
        base = run_vllm(job, Path(tmp), "vllm")
        spec = run_vllm({**job, "drafter": str(spec_dir)}, Path(tmp), "vllm+drafter")
    ours = selfspec_run(args.drafter, prompts, args.k, args.dtype, args.max_new_tokens)
    report = summarise(args, base, spec, ours, len(prompts))
    (out / "check.json").write_text(json.dumps(report, indent=1))
    (out / "check.md").write_text(report["markdown"])
    print(report["markdown"])
    if report["failures"]:
        raise SystemExit("serving check FAILED: " + "; ".join(report["failures"]))


def summarise(args, base: dict, spec: dict, ours: dict, n: int) -> dict:
    s = spec["spec"]
    drafts = max(s["drafts"], 1)
    tau_vllm = 1 + s["accepted"] / drafts
    uncond = [a / drafts for a in s.get("per_pos") or []]
    cond = [u if i == 0 else (u / uncond[i - 1] if uncond[i - 1] else 0.0) for i, u in enumerate(uncond)]
    same_spec = sum(a == b for a, b in zip(base["outputs"], spec["outputs"], strict=True))
    same_ours = sum(a == b for a, b in zip(base["outputs"], ours["outputs"], strict=True))
    tps = {
        k: v["tokens"] / v["seconds"] for k, v in (("vllm", base), ("vllm+drafter", spec), ("selfspec", ours))
    }
    tps["target (transformers generate)"] = ours["tokens"] / ours["target_seconds"]
    failures = []
    if same_spec < n and args.dtype == "fp32":
        failures.append(
            f"vLLM's output with the drafter differs from its output without it on {n - same_spec}/{n}"
        )
    if tau_vllm < (1 - args.tolerance) * ours["mean_accepted"]:
        failures.append(
            f"vLLM accepts {tau_vllm:.2f} tokens/step, more than {args.tolerance:.0%} below selfspec's "
            f"{ours['mean_accepted']:.2f}"
        )
    fmt = ", ".join
    lines = [
        f"## vLLM serving check: {args.drafter}",
        "",
        f"{n} prompts ({args.prompts}), greedy, {args.max_new_tokens} new tokens, batch 1, {args.dtype}, chain of "
        f"{args.k} draft tokens (speculators export).",
        "",
        "| | mean accepted | acceptance by position | tok/s | speed-up |",
        "|---|---:|---|---:|---:|",
        f"| vLLM alone | 1.00 | | {tps['vllm']:.1f} | 1.00x |",
        f"| vLLM + drafter | {tau_vllm:.2f} | {fmt(f'{c:.2f}' for c in cond)} | {tps['vllm+drafter']:.1f} | "
        f"{tps['vllm+drafter'] / tps['vllm']:.2f}x |",
        f"| transformers generate (selfspec's baseline) | 1.00 | | {tps['target (transformers generate)']:.1f} | |",
        f"| selfspec decoder, same chain | {ours['mean_accepted']:.2f} | "
        f"{fmt('n/a' if c is None else f'{c:.2f}' for c in ours['by_position'])} | {tps['selfspec']:.1f} | "
        f"{tps['selfspec'] / tps['target (transformers generate)']:.2f}x vs generate |",
        "",
        f"- vLLM with the drafter identical to vLLM without it: {same_spec}/{n}; selfspec's output identical to "
        f"vLLM's: {same_ours}/{n} (two kernels: near-ties may flip).",
        f"- vLLM's mean accepted length {tau_vllm:.2f} vs selfspec's {ours['mean_accepted']:.2f} "
        f"({tau_vllm / ours['mean_accepted'] - 1:+.0%}; tolerance -{args.tolerance:.0%}).",
        f"- verdict: {'FAILED: ' + '; '.join(failures) if failures else 'passed'}",
    ]
    return {
        "tau_vllm": tau_vllm,
        "tau_selfspec": ours["mean_accepted"],
        "acceptance_by_position_vllm": cond,
        "acceptance_by_position_selfspec": ours["by_position"],
        "tokens_per_s": tps,
        "identical_spec_vs_base": same_spec,
        "identical_selfspec_vs_vllm": same_ours,
        "num_prompts": n,
        "failures": failures,
        "markdown": "\n".join(lines) + "\n",
    }


if __name__ == "__main__":
    main()
