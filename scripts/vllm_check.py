"""Serving check: does vLLM accept a selfspec EAGLE-3 drafter as often as selfspec's own decoder does?

    python scripts/vllm_check.py --drafter outputs/eagle3/drafter --out results/vllm/check
    python scripts/vllm_check.py --drafter outputs/eagle3/drafter --dtype bf16 --k 3,4,5 --rounds 2

Exports the drafter in the speculators format, then on the same prompts (greedy, batch 1, one dtype):
vLLM without the drafter, vLLM with it (``speculative_config`` method eagle3, a chain of ``--k`` tokens; a
comma list sweeps chain lengths), and selfspec's decoder with the same chain. Reports vLLM's spec-decode metrics
(mean accepted length, acceptance by position) beside selfspec's, and the tokens/s of each. ``--rounds`` repeats
the vLLM runs in alternation (alone, each chain, alone, ...) and keeps each one's fastest round, so a slow minute
of the machine does not fall on one side only; every round's ratio is printed too.

Exits 1 if vLLM's output with the drafter differs from its output without it (fp32; in bf16 a difference must
be a near-tie: the target's top-2 logit margin at the first differing token below the block-vs-single rounding
noise measured on this machine, as the bench rules), or if vLLM's mean accepted length is more than
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
        "target": target,
    }


def reference_noise(target, prompts: list[list[int]], ref: list[list[int]]):
    """The block-vs-single noise of the check's dtype on vLLM's own outputs (the same for every chain)."""
    from selfspec.decode.bench.lossless import block_noise

    return block_noise(target, [p + r for p, r in zip(prompts[:4], ref, strict=False)],
                       [len(p) for p in prompts[:4]])  # fmt: skip


def divergences(target, prompts: list[list[int]], ref: list[list[int]], got: list[list[int]], noise) -> dict:
    """Each prompt where ``got`` differs from ``ref`` (vLLM alone): the first differing index and the target's
    top-2 logit margin there (one forward over the prompt and ``ref`` up to it, in the check's dtype), judged
    against the block-vs-single noise of that dtype on this machine (``selfspec.decode.bench.lossless``)."""
    import torch

    from selfspec.decode.bench.lossless import first_divergence, near_tie, top2_margin

    divs = []
    for j, (p, r, g) in enumerate(zip(prompts, ref, got, strict=True)):
        i = first_divergence(g, r)
        if i is None:
            continue
        margin = None
        if i < len(r):
            with torch.no_grad():
                ids = torch.tensor([p + r[:i]], device=target.device)
                margin = top2_margin(target(ids).logits[0, -1])
        divs.append({"prompt": j, "index": i, "margin": margin, "near_tie": near_tie(margin, noise)})
    return {"noise": noise.max_abs, "divergences": divs, "near_ties_only": all(d["near_tie"] for d in divs)}


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
    ap.add_argument(
        "--dataset", help="--prompts eval: this dataset folder's eval split instead of the drafter's own"
    )
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--k", default="3", help="draft tokens per step (num_speculative_tokens); a comma list sweeps"
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="alternating rounds of the vLLM runs (fastest kept)"
    )
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
    try:
        chains = [int(x) for x in args.k.split(",")]
    except ValueError:
        ap.error(f"--k {args.k!r}: draft tokens per step, an integer or a comma list such as 3,4,5")
    if args.rounds < 1 or min(chains) < 1:
        ap.error("--rounds and every --k must be at least 1")
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
        dataset = args.dataset or dataset_of_drafter(args.drafter)
        prompts = prompts_from_dataset_dir(dataset, args.num_prompts)
    else:
        _, tok = load_target(target_name, device="cpu", dtype="fp32")
        prompts = load_prompts_file(BUILTIN.get(args.prompts, args.prompts), tok, args.num_prompts)
    job = {"target": target_dir, "dtype": args.dtype, "prompts": prompts}
    job.update(max_new_tokens=args.max_new_tokens, max_model_len=2048)
    spec_dirs = {k: export(args.drafter, "speculators", out / f"speculators_k{k}", speculative_tokens=k)
                 for k in chains}  # fmt: skip
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # alone, each chain, alone, each chain, ...
            runs.setdefault("vllm", []).append(run_vllm(job, Path(tmp), f"vllm_r{r}"))
            for k in chains:
                spec_job = {**job, "drafter": str(spec_dirs[k]), "k": k}
                runs.setdefault(f"k{k}", []).append(run_vllm(spec_job, Path(tmp), f"vllm+drafter_k{k}_r{r}"))
    reports, noise = [], None
    for k in chains:
        ours = selfspec_run(args.drafter, prompts, k, args.dtype, args.max_new_tokens)
        target = ours.pop("target")
        ref = runs["vllm"][0]["outputs"]
        if noise is None:
            noise = reference_noise(target, prompts, ref)
        div = divergences(target, prompts, ref, runs[f"k{k}"][0]["outputs"], noise)
        reports.append(summarise(args, k, runs["vllm"], runs[f"k{k}"], ours, div, len(prompts)))
        del target, ours
    report = {"chains": reports, "failures": [f for r in reports for f in r["failures"]]}
    report["markdown"] = "\n".join(r["markdown"] for r in reports)
    (out / "check.json").write_text(json.dumps(report, indent=1))
    (out / "check.md").write_text(report["markdown"])
    print(report["markdown"])
    if report["failures"]:
        raise SystemExit("serving check FAILED: " + "; ".join(report["failures"]))


def _fastest(rounds: list[dict]) -> dict:
    return min(rounds, key=lambda r: r["seconds"])


def summarise(
    args, k: int, base_rounds: list[dict], spec_rounds: list[dict], ours: dict, div: dict, n: int
) -> dict:
    base, spec = _fastest(base_rounds), _fastest(spec_rounds)
    s = spec["spec"]
    drafts = max(s["drafts"], 1)
    tau_vllm = 1 + s["accepted"] / drafts
    uncond = [a / drafts for a in s.get("per_pos") or []]
    cond = [u if i == 0 else (u / uncond[i - 1] if uncond[i - 1] else 0.0) for i, u in enumerate(uncond)]
    same_spec = n - len(div["divergences"])
    same_ours = sum(a == b for a, b in zip(base["outputs"], ours["outputs"], strict=True))
    tps = {
        name: v["tokens"] / v["seconds"]
        for name, v in (("vllm", base), ("vllm+drafter", spec), ("selfspec", ours))
    }
    tps["target (transformers generate)"] = ours["tokens"] / ours["target_seconds"]
    per_round = [(b["seconds"] / b["tokens"]) / (sp["seconds"] / sp["tokens"])
                 for b, sp in zip(base_rounds, spec_rounds, strict=True)]  # fmt: skip
    failures = []
    if same_spec < n and (args.dtype == "fp32" or not div["near_ties_only"]):
        what = "differs" if args.dtype == "fp32" else "differs beyond near-ties"
        failures.append(f"chain {k}: vLLM's output with the drafter {what} from its output without it "
                        f"on {n - same_spec}/{n}")  # fmt: skip
    if tau_vllm < (1 - args.tolerance) * ours["mean_accepted"]:
        failures.append(
            f"chain {k}: vLLM accepts {tau_vllm:.2f} tokens/step, more than {args.tolerance:.0%} below "
            f"selfspec's {ours['mean_accepted']:.2f}"
        )
    fmt = ", ".join
    if same_spec == n:
        exact = f"{n}/{n}"
    else:
        where = fmt(f"prompt {d['prompt']} at token {d['index']}, margin "
                    f"{'n/a' if d['margin'] is None else format(d['margin'], '.3f')}" for d in div["divergences"])  # fmt: skip
        kind = "near-ties only" if div["near_ties_only"] else "NOT only near-ties"
        exact = f"{same_spec}/{n}; {kind} (noise {div['noise']:.3f}): {where}"
    lines = [
        f"## vLLM serving check: {args.drafter}, chain of {k}",
        "",
        f"{n} prompts ({args.prompts}), greedy, {args.max_new_tokens} new tokens, batch 1, {args.dtype}, chain of "
        f"{k} draft tokens (speculators export); vLLM: fastest of {len(base_rounds)} alternating round(s).",
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
        f"- vLLM + drafter over vLLM alone, each round: {fmt(f'{x:.2f}x' for x in per_round)}.",
        f"- vLLM with the drafter identical to vLLM without it: {exact}; selfspec's output identical to "
        f"vLLM's: {same_ours}/{n} (two kernels: near-ties may flip).",
        f"- vLLM's mean accepted length {tau_vllm:.2f} vs selfspec's {ours['mean_accepted']:.2f} "
        f"({tau_vllm / ours['mean_accepted'] - 1:+.0%}; tolerance -{args.tolerance:.0%}).",
        f"- verdict: {'FAILED: ' + '; '.join(failures) if failures else 'passed'}",
        "",
    ]
    return {
        "k": k,
        "tau_vllm": tau_vllm,
        "tau_selfspec": ours["mean_accepted"],
        "acceptance_by_position_vllm": cond,
        "acceptance_by_position_selfspec": ours["by_position"],
        "tokens_per_s": tps,
        "speedup_per_round": per_round,
        "identical_spec_vs_base": same_spec,
        "divergences": div,
        "identical_selfspec_vs_vllm": same_ours,
        "num_prompts": n,
        "failures": failures,
        "markdown": "\n".join(lines) + "\n",
    }


if __name__ == "__main__":
    main()
