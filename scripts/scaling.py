"""How far more data goes: EAGLE-3's acceptance against training tokens, on one fixed set of held-out prompts.

    python scripts/scaling.py --rows 32 128 512 2048 --runs outputs/scaling --out results/scaling [-- OVERRIDES]

Each point trains ``+experiment=eagle3`` on the first N conversations of the same dataset (``train.train_rows``;
the dataset and its eval split are the shared overrides', e.g. the long budget's), for at least ``--min-steps``
optimiser steps and at least ``--epochs`` passes, then benches it (``decode/bench/run.py``: greedy, batch 1,
``tree=auto``) on the same eval prompts. Writes ``<out>.md`` (the table) and ``<out>.png`` (mean accepted
tokens against training tokens, log scale). A finished point is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _cmd(script: str, *args: str) -> None:
    cmd = [sys.executable, str(REPO / script), *args]
    print("==", " ".join(cmd[1:]), flush=True)  # noqa: T201 - progress of a script
    subprocess.run(cmd, cwd=REPO, check=True)


def point(rows: int, args: argparse.Namespace, reuse: Path | None = None) -> dict:
    """One point: train on the first ``rows`` conversations (or take the finished run ``reuse``), then bench."""
    out = reuse or Path(args.runs) / f"rows_{rows}"
    done = Path(args.runs) / f"rows_{rows}" / "point.json"
    if done.is_file():
        return json.loads(done.read_text())
    per_step = 4  # train.micro_batch_size of the eagle3 experiments, grad_accum 1, one rank
    steps = max(args.min_steps, math.ceil(args.epochs * rows / per_step))
    if reuse is None:
        _cmd("train/run.py", "+experiment=eagle3", f"train.train_rows={rows}", f"train.max_steps={steps}",
             "train.epochs=0", "train.report=false", "train.save_every=0", f"output_dir={out}",
             *args.shared)  # fmt: skip
    meta = yaml.safe_load((out / "drafter" / "train_config.yaml").read_text())
    steps = int(meta["metrics"].get("train/steps", steps))
    from datasets import load_from_disk

    split = load_from_disk(meta["dataset_dir"])["train"]
    split = split.select(range(min(rows, len(split))))
    tokens = sum(sum(m) for m in split["loss_mask"])
    bench = done.parent / "bench"
    _cmd("decode/bench/run.py", f"drafter={out / 'drafter'}", f"num_prompts={args.prompts}",
         "max_new_tokens=128", "methods=[target,selfspec]", "decode.adaptive=false",
         f"output_dir={bench}")  # fmt: skip  # the drafter's acceptance at every step, not the gate's choice
    report = json.loads((bench / "bench.json").read_text())
    row = next(m for m in report["methods"] if m["method"] == "selfspec")
    acc = json.loads((out / "drafter" / "acceptance.json").read_text())
    result = {
        "rows": rows,
        "train_tokens": tokens,
        "steps": steps,
        "mean_accepted": row["mean_accepted_tokens"],
        "speedup": row["speedup"],
        "tree": row.get("tree"),
        "tau_chain5": acc["tau_chain"][min(4, len(acc["tau_chain"]) - 1)],
        "eval_top1": meta["metrics"].get("eval/top1_step1"),
    }
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    return result


def render(points: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# EAGLE-3 against training data",
        "",
        f"`python scripts/scaling.py --rows {' '.join(map(str, args.rows))} {' '.join('--reuse ' + r for r in args.reuse)} -- {' '.join(args.shared)}`: the same "
        f"{args.prompts} held-out prompts for every point, greedy, 128 new tokens, batch 1, tree=auto.",
        "",
        "| train conversations | train tokens | steps | eval top-1 @1 | tau_chain5 (teacher-forced) | mean accepted "
        "(decoded) | speed-up | tree |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['rows']} | {p['train_tokens']} | {p['steps']} | {p['eval_top1']:.3f} | {p['tau_chain5']:.2f} | "
            f"{p['mean_accepted']:.2f} | {p['speedup']:.2f}x | {p['tree']} |"
        )
    return "\n".join(lines) + "\n"


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p["train_tokens"] for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(x, [p["mean_accepted"] for p in points], "o-", label="mean accepted tokens (decoded, tree=auto)")
    ax.plot(x, [p["tau_chain5"] for p in points], "s--", label="depth-5 chain, teacher-forced")
    for p in points:
        ax.annotate(f"{p['speedup']:.2f}x", (p["train_tokens"], p["mean_accepted"]), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)  # fmt: skip
    ax.set(xscale="log", xlabel="training tokens (target-written)", ylabel="tokens per target forward",
           title="EAGLE-3 on SmolLM2-135M: acceptance against data")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[64, 256, 1024])
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--min-steps", type=int, default=150)
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts benched per point")
    ap.add_argument("--runs", default="outputs/scaling")
    ap.add_argument("--out", default="results/scaling")
    ap.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="ROWS=RUN",
        help="a finished eagle3 run folder to use as the point of ROWS conversations (e.g. the long run)",
    )
    ap.add_argument("shared", nargs="*", help="Hydra overrides for every training run (after --)")
    args = ap.parse_args()
    reuse = {int(k): Path(v) for k, v in (r.split("=", 1) for r in args.reuse)}
    points = [point(r, args, reuse.get(r)) for r in sorted(set(args.rows) | set(reuse))]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(render(points, args))
    plot(points, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())  # noqa: T201 - the table is the product


if __name__ == "__main__":
    main()
