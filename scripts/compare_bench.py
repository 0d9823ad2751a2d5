"""Does a rerun repeat a bench? ``python scripts/compare_bench.py A/bench.json B/bench.json [--out rerun.md]``.

For every method in both reports: outputs identical to the target's, mean accepted tokens (and whether the
acceptance counts are exactly equal, as they are when both runs trained bit-identical drafters), and the speed-up
over the target. Noise is judged per prompt: a difference counts as noise when it is within two standard errors
of the difference, from the per-prompt values (speed-up = target time / method time on the same prompt; tokens
per target forward). A method missing from one report, or a report with a single prompt (no standard error to
judge by), is never "within noise".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from statistics import mean, stdev


def per_prompt_speedups(report: dict, name: str) -> list[float]:
    methods = {m["name"]: m for m in report["methods"]}
    base, row = methods["target"]["per_prompt"], methods[name]["per_prompt"]
    return [b["wall_time_s"] / r["wall_time_s"] for b, r in zip(base, row, strict=True)]


def per_prompt_accepted(report: dict, name: str) -> list[float]:
    row = {m["name"]: m for m in report["methods"]}[name]["per_prompt"]
    return [r["new_tokens"] / r["target_forwards"] for r in row]


def within_noise(xa: list[float], xb: list[float]) -> tuple[float, bool | None]:
    """(2 standard errors of mean(xa) - mean(xb), whether the difference is within them); None when a run has
    fewer than two prompts, so there is no standard error to judge by."""
    if min(len(xa), len(xb)) < 2:
        return math.nan, None
    bound = 2 * math.hypot(stderr(xa), stderr(xb))
    return bound, abs(mean(xa) - mean(xb)) <= bound


def stderr(xs: list[float]) -> float:
    return stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("inf")


def compare(a: dict, b: dict) -> tuple[list[str], bool]:
    """Markdown rows comparing the methods of two reports, and whether everything matched within noise."""
    rows = [
        "| method | identical A / B | mean accepted A / B | same counts | within noise "
        "| speed-up A / B | per prompt A / B ± 2 s.e. | within noise |",
        "|---|:---:|---|:---:|:---:|---|---|:---:|",
    ]
    ok = True
    b_methods = {m["name"]: m for m in b["methods"]}
    rows += _missing_rows(a, b)
    ok &= len(rows) == 2
    for ma in a["methods"]:
        mb = b_methods.get(ma["name"])
        if mb is None or ma["name"] == "target":
            continue
        sa, sb = per_prompt_speedups(a, ma["name"]), per_prompt_speedups(b, ma["name"])
        s_bound, s_ok = within_noise(sa, sb)
        acc_a, acc_b = per_prompt_accepted(a, ma["name"]), per_prompt_accepted(b, ma["name"])
        _, acc_ok = within_noise(acc_a, acc_b)
        same_counts = ma["accepted_by_position"] == mb["accepted_by_position"] and ma.get(
            "drafted_by_position"
        ) == mb.get("drafted_by_position")
        acc_ok = True if same_counts else acc_ok
        ok &= bool(s_ok and acc_ok and ma["identical"] and mb["identical"])
        yes = {True: "yes", False: "no", None: "cannot tell (1 prompt)"}
        rows.append(
            f"| {ma['name']} | {yes[ma['identical']]} / {yes[mb['identical']]} "
            f"| {ma['mean_accepted_tokens']:.2f} / {mb['mean_accepted_tokens']:.2f} | {yes[same_counts]} "
            f"| {yes[acc_ok]} | {ma['speedup']:.2f}x / {mb['speedup']:.2f}x "
            f"| {mean(sa):.2f} / {mean(sb):.2f} ± {s_bound:.2f} | {yes[s_ok]} |"
        )
    return rows, ok


def _missing_rows(a: dict, b: dict) -> list[str]:
    """A row for every method only one of the reports has (a rerun that lost a method is not a rerun)."""
    names_a, names_b = ({m["name"] for m in r["methods"]} for r in (a, b))
    blank = " | " * 6
    return [f"| {n} | missing in B{blank}|" for n in sorted(names_a - names_b)] + [
        f"| {n} | missing in A{blank}|" for n in sorted(names_b - names_a)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    rows, ok = compare(a, b)
    ta, tb = ({m["name"]: m for m in r["methods"]}["target"]["tokens_per_s"] for r in (a, b))
    lines = [
        f"A: {args.a} ({a['created']}), B: {args.b} ({b['created']}); target alone "
        f"{ta:.1f} / {tb:.1f} tokens/s",
        "",
        *rows,
        "",
        "everything within noise" if ok else "NOT within noise",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
