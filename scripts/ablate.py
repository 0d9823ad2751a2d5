"""Recipe ablations: each row one training run on the same data and budget, one choice changed.

    python scripts/ablate.py [--out results/ablations.md] [--runs outputs/ablations] [--only NAME ...] [-- OVERRIDES]

Every run is ``python train/run.py <row overrides> <shared overrides>`` (no end-of-run report: the ablation
compares drafters by their teacher-forced acceptance on the eval split, which is exact and noise-free, and by
training throughput). The table reports, per row: training tokens/s, wall time, eval top-1 at the first draft
position, and the expected tokens per step of a depth-5 chain (``tau_chain``, from the exported
``acceptance.json``: the product of first-choice acceptance rates along the chain, bonus included). A finished
run is reused, so the script can be stopped and rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# The shared budget: the quick-start data, a fixed number of passes, no report.
SHARED = ["train.report=false", "train.eval_every=0", "train.save_every=0"]

# (name, what the row decides, overrides)
ROWS: list[tuple[str, str, list[str]]] = [
    ("eagle3 (default)", "baseline", ["+experiment=eagle3"]),
    ("eagle3 ttt_steps=3", "TTT length", ["+experiment=eagle3", "head.ttt_steps=3"]),
    ("eagle3 ttt_steps=5", "TTT length", ["+experiment=eagle3", "head.ttt_steps=5"]),
    ("eagle3 fc_init=random", "fc initialisation", ["+experiment=eagle3", "head.fc_init=random"]),
    ("eagle3 lr=3e-4", "learning rate", ["+experiment=eagle3", "train.lr=3e-4"]),
    ("eagle3 lr=3e-3", "learning rate", ["+experiment=eagle3", "train.lr=3e-3"]),
    (
        "eagle3 warmup_ratio=0",
        "warmup",
        ["+experiment=eagle3", "train.warmup_ratio=0", "train.warmup_steps=1"],
    ),
    (
        "eagle3 freeze_lm_head",
        "EAGLE-3 lm_head frozen (overfitting)",
        ["+experiment=eagle3", "head.freeze_lm_head=true"],
    ),
    (
        "eagle3 feature_noise=1",
        "EAGLE-3 input-feature noise (overfitting)",
        ["+experiment=eagle3", "train.loss.feature_noise=1.0"],
    ),
    ("eagle3 features=online", "feature mode (throughput)", ["+experiment=eagle3", "train.features=online"]),
    (
        "eagle3 compute_dtype=fp32",
        "autocast (throughput, quality)",
        ["+experiment=eagle3", "train.compute_dtype=fp32"],
    ),
    ("eagle (default)", "baseline", ["+experiment=eagle"]),
    (
        "eagle feature_noise=0.2",
        "EAGLE-1 feature noise",
        ["+experiment=eagle", "train.loss.feature_noise=0.2"],
    ),
    ("eagle draft_vocab_size=0", "reduced vocabulary", ["+experiment=eagle", "head.draft_vocab_size=0"]),
    ("medusa (default)", "baseline", ["+experiment=medusa"]),
    (
        "medusa own_lm_head",
        "Medusa heads' own output layers",
        ["+experiment=medusa", "head.own_lm_head=true"],
    ),
    ("medusa num_layers=2", "Medusa head depth", ["+experiment=medusa", "head.num_layers=2"]),
    ("draft (default)", "baseline", ["+experiment=draft"]),
    ("draft num_layers=6", "draft model depth", ["+experiment=draft", "head.num_layers=6"]),
    ("dflash (default)", "baseline", ["+experiment=dflash"]),
    ("dflash num_layers=1", "DFlash depth", ["+experiment=dflash", "head.num_layers=1"]),
    ("dflash lr=3e-3", "DFlash learning rate", ["+experiment=dflash", "train.lr=3e-3"]),
]


def run(name: str, overrides: list[str], shared: list[str], runs: Path) -> dict:
    out = runs / name.replace(" ", "_").replace("=", "-").replace("(", "").replace(")", "")
    result = out / "ablation.json"
    if result.is_file():
        return json.loads(result.read_text())
    cmd = [sys.executable, str(REPO / "train" / "run.py"), *overrides, *SHARED, *shared, f"output_dir={out}"]
    print("==", " ".join(cmd[1:]), flush=True)  # noqa: T201 - progress of a script
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.time() - t0
    metrics = yaml.safe_load((out / "drafter" / "train_config.yaml").read_text())["metrics"]
    acc = json.loads((out / "drafter" / "acceptance.json").read_text())
    top1 = next(
        (v for k, v in sorted(metrics.items()) if k.startswith("eval/top1_") and k.endswith("1")), None
    )
    row = {
        "name": name,
        "overrides": overrides,
        "wall_s": wall,
        "tokens_per_s": metrics.get("train/tokens_per_s"),
        "steps": metrics.get("train/steps"),
        "eval_top1": top1,
        "tau_chain5": acc["tau_chain"][min(4, len(acc["tau_chain"]) - 1)],
        "p_chain": acc["p_chain"],
    }
    result.write_text(json.dumps(row, indent=1))
    return row


def render(rows: list[dict], decides: dict[str, str], shared: list[str]) -> str:
    lines = [
        "# Recipe ablations",
        "",
        f"`python scripts/ablate.py {' '.join(['--', *shared]) if shared else ''}`: every row trains on the same "
        "data with the same budget; one choice changes. tau_chain5 = expected tokens per target forward of a "
        "depth-5 chain, teacher-forced on the eval split (`acceptance.json`); top-1 = eval agreement at the "
        "first draft position.",
        "",
        "| run | decides | steps | train tok/s | wall (s) | eval top-1 @1 | tau_chain5 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {decides[r['name']]} | {r['steps']:.0f} | {r['tokens_per_s']:.0f} | "
            f"{r['wall_s']:.0f} | {r['eval_top1']:.3f} | {r['tau_chain5']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/ablations.md")
    ap.add_argument("--runs", default="outputs/ablations")
    ap.add_argument("--only", nargs="*", default=None, help="row names to run (default: all)")
    ap.add_argument("shared", nargs="*", help="Hydra overrides for every run (after --)")
    args = ap.parse_args()
    decides = {name: why for name, why, _ in ROWS}
    rows = [
        run(name, overrides, args.shared, Path(args.runs))
        for name, _, overrides in ROWS
        if args.only is None or name in args.only
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(rows, decides, args.shared))
    print(Path(args.out).read_text())  # noqa: T201 - the table is the product


if __name__ == "__main__":
    main()
