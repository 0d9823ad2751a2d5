"""selfspec against the peer runtime: economize decoding the same exported heads, same prompts, dtype, budget.

    python scripts/economize_compare.py --drafter outputs/eagle3/drafter --drafter outputs/medusa/drafter \
        [--venv /work/venvs/economize] [--prompts 8] [--max-new-tokens 128] [--dtype bf16]

Each drafter is exported in the layout economize 0.3.2 reads (EAGLE-3: speculators; Medusa: FasterDecoding) and
decoded greedily, batch 1, on the drafter's held-out prompts by economize (in its own venv: ``pip install
torch==2.13.0 economize==0.3.2``; it runs as a subprocess, ``scripts/economize_client.py``) at several draft
lengths, keeping its fastest, and by selfspec's decoder with its default ``tree=auto``. The two alternate twice
(selfspec, economize, selfspec, economize) so that a slow minute hits both; the table keeps each side's best
round. Prints a markdown table; tokens/s counts new tokens over wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.decode.bench.prompts import prompts_from_dataset_dir
from selfspec.decode.bench.setup import dataset_of_drafter
from selfspec.heads import load_drafter, read_metadata
from selfspec.heads.format_export import export
from selfspec.target import load_target, resolve_target_path

HERE = Path(__file__).resolve().parent
LAYOUT = {"eagle3": "speculators", "medusa": "medusa"}


def selfspec_round(dec: SpeculativeDecoder, prompts: list[list[int]], max_new: int) -> dict:
    tokens, seconds, steps = 0, 0.0, 0
    for p in prompts:
        ids = torch.tensor([p], device=dec.target.device)
        t0 = time.perf_counter()
        res = dec.generate(ids, max_new_tokens=max_new, eos_token_id=[])
        seconds += time.perf_counter() - t0
        tokens += res.stats.new_tokens
        steps += res.stats.target_forwards
    return {"tokens": tokens, "seconds": seconds, "tokens_per_forward": tokens / max(steps, 1)}


def economize_round(venv: Path, target_dir: str, export_dir: Path, prompts: list[list[int]], max_new: int,
                    dtype: str, cycles: str) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        pfile, ofile = Path(tmp) / "prompts.json", Path(tmp) / "out.json"
        pfile.write_text(json.dumps(prompts))
        subprocess.run([str(venv / "bin" / "python"), str(HERE / "economize_client.py"), target_dir,
                        str(export_dir), str(pfile), str(max_new), dtype, cycles, str(ofile)],
                       check=True, timeout=3600)  # fmt: skip
        out = json.loads(ofile.read_text())
    best = max(out["cycles"].items(), key=lambda kv: kv[1]["tokens"] / kv[1]["seconds"])
    return {"cycle": int(best[0]), **best[1], "technique": out["technique"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", action="append", required=True)
    ap.add_argument("--venv", default="/work/venvs/economize")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--cycles", default="2,3,4,5")
    args = ap.parse_args()
    rows = []
    for path in args.drafter:
        kind = read_metadata(path)["drafter_type"]
        name = read_metadata(path)["target"]["name_or_path"]
        target, tok = load_target(name, dtype=args.dtype)
        target_dir = resolve_target_path(name)
        prompts = prompts_from_dataset_dir(dataset_of_drafter(path), args.prompts)
        dec = SpeculativeDecoder(target, load_drafter(path, target, tokenizer=tok))
        dec.tree_choice()  # measured and planned before any timing
        with tempfile.TemporaryDirectory() as tmp:
            exported = Path(tmp) / LAYOUT[kind]
            export(path, LAYOUT[kind], exported, target=target, target_name_or_path=target_dir)
            with torch.inference_mode():
                selfspec_round(dec, prompts[:1], 8)  # warm-up
                ours, theirs = [], []
                for _ in range(2):
                    ours.append(selfspec_round(dec, prompts, args.max_new_tokens))
                    theirs.append(economize_round(Path(args.venv), target_dir, exported, prompts,
                                                  args.max_new_tokens, args.dtype, args.cycles))  # fmt: skip
        o = max(ours, key=lambda r: r["tokens"] / r["seconds"])
        e = max(theirs, key=lambda r: r["tokens"] / r["seconds"])
        rows.append((kind, dec.tree_choice().describe(), o, e))
    print(f"\nselfspec vs economize 0.3.2: {args.prompts} held-out prompts x {args.max_new_tokens} new tokens, "
          f"{args.dtype}, batch 1, greedy, best of 2 alternating rounds each\n")  # fmt: skip
    print(
        "| head | selfspec tok/s | selfspec tree | economize tok/s | economize cycle | selfspec / economize |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for kind, tree, o, e in rows:
        ot, et = o["tokens"] / o["seconds"], e["tokens"] / e["seconds"]
        print(f"| {kind} | {ot:.1f} | {tree} | {et:.1f} | {e['cycle']} ({e['technique']}) | {ot / et:.2f}x |")


if __name__ == "__main__":
    main()
