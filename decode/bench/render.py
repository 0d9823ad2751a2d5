"""Render a bench report: the markdown table, ``acceptance.png``, and the merge of several ``bench.json`` files.

Kept apart from report.py so that rebuilding a table (``scripts/merge_bench.py``) needs neither torch models nor
a target: it reads the JSON only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfspec.decode.bench.methods import METHODS
from selfspec.utils import SelfspecError, atomic_write_json, atomic_write_text

SHOWN_POSITIONS = 5  # acceptance-by-position columns in the table (the JSON and the plot keep all)
MIN_ROUNDS = 10  # rates from fewer rounds than this are shown in parentheses (table) or hollow (plot)

FOOTNOTES = """\
- **mean accepted**: new tokens per target forward, prefill included (the target alone scores 1.00). Every \
method is counted the same way, by a forward pre-hook on the target's base model. "(x drafted)": where \
selfspec's adaptive gate left steps plain (it measured them faster), the mean over the steps it drafted.
- **acceptance @k**: of the verification rounds that reached draft position k (a k-th token drafted, all \
earlier ones accepted), the fraction that accepted it (conditional acceptance, as in the EAGLE papers). selfspec: \
from the decoder's stats. transformers' assisted / prompt lookup: read from the size of each target forward \
(candidates = tokens fed minus the one uncached accepted token; the last round, which EOS or the length limit may \
cut, is left out). Prompt lookup drafts nothing when its n-gram is not found in the context. A rate in \
parentheses rests on fewer than {min_rounds} rounds (few reached that position): read it as anecdote.
- **tokens/s** and **speed-up**: total new tokens over total wall time, batch 1; speed-up over the target alone \
measured in the same run, the methods interleaved prompt by prompt after a warm-up.
- **identical**: every output equals `target.generate(do_sample=False)` token for token, up to EOS or \
max_new_tokens; *near-ties*: outputs that differ only where the reference's top two logits were closer than the \
dtype's block-vs-single rounding noise (bf16), the first divergence of each prompt checked."""


def display_name(row: dict[str, Any]) -> str:
    method, _, label = row["name"].partition(":")
    return {
        "target": "target alone (greedy)",
        "prompt_lookup": "prompt lookup (transformers)",
        "assisted": f"assisted, {label} (transformers)",
        "selfspec": f"selfspec {label}",
        "vllm": "vLLM, target alone",
        "vllm+drafter": f"vLLM + {label} (speculators export)",
    }.get(method, row["name"])


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _enough_rounds(m: dict[str, Any], k: int) -> bool:
    """Did at least MIN_ROUNDS rounds reach position k+1? (True when the report has no counts.)"""
    rounds = m.get("drafted_by_position") or []
    return k >= len(rounds) or rounds[k] >= MIN_ROUNDS


def _rate(m: dict[str, Any], k: int) -> str:
    """Acceptance at position k+1, in parentheses when fewer than MIN_ROUNDS rounds reached it."""
    acc = m["acceptance_by_position"] or []
    if k >= len(acc) or acc[k] is None:
        return "n/a"
    return _fmt(acc[k]) if _enough_rounds(m, k) else f"({_fmt(acc[k])})"


def table_rows(report: dict[str, Any], positions: int = SHOWN_POSITIONS) -> tuple[list[str], list[list[str]]]:
    header = [
        "method",
        "mean accepted",
        *[f"acc @{k + 1}" for k in range(positions)],
        "tokens/s",
        "speed-up",
        "identical",
    ]
    rows = []
    for m in report["methods"]:
        rows.append(
            [
                display_name(m),
                tau_cell(m),
                *[_rate(m, k) for k in range(positions)],
                _fmt(m["tokens_per_s"], ".1f"),
                f"{m['speedup']:.2f}x" if m["speedup"] is not None else "n/a",
                _identical(m),
            ]
        )
    return header, rows


def tau_cell(m: dict[str, Any]) -> str:
    """Mean accepted tokens per target forward; with the adaptive gate's plain steps, also over the drafted
    steps alone (the drafter's own acceptance), in parentheses."""
    cell = _fmt(m["mean_accepted_tokens"])
    if m.get("plain_steps") and m.get("decoder_mean_accepted_tokens") is not None:
        cell += f" ({m['decoder_mean_accepted_tokens']:.2f} drafted)"
    return cell


def _identical(m: dict[str, Any]) -> str:
    """yes; near-ties only (every divergence within the measured bf16 noise); or no."""
    if m["identical"]:
        return "yes"
    n = m["mismatched_prompts"]
    if m.get("near_ties_only"):
        return f"near-ties ({n} prompts)"
    return f"no ({n} prompts differ)"


def _dtype_lines(report: dict[str, Any]) -> list[str]:
    d = report.get("dtype")
    if not d:
        return []
    lines = [f"- **dtype {d['dtype']}**: block-vs-single logit noise on this machine: max |Δ| "
             f"{d['noise_max_abs_logit']:.3g} over {d['noise_positions']} positions "
             f"({d['noise_argmax_flips']} argmax flips); a divergence from `generate` whose reference top-2 "
             f"margin is within it is a near-tie."]  # fmt: skip
    if "fp32_tokens_per_s" in d:
        lines.append(
            f"- **{d['dtype']} vs fp32**, the target alone on {d['paired_prompts']} paired prompts: "
            f"{d['target_tokens_per_s']:.1f} vs {d['fp32_tokens_per_s']:.1f} tokens/s ({d['over_fp32']:.2f}x)."
        )
    return lines


def _tree_lines(report: dict[str, Any]) -> list[str]:
    out = []
    for m in report["methods"]:
        if m.get("tree"):
            gated = ""
            if m.get("plain_steps"):
                gated = (
                    f" The adaptive gate measured plain decoding faster in {m['plain_steps']} of "
                    f"{m['decoder_steps']} steps and drafted in the others (mean accepted over the drafted "
                    f"steps: {m['decoder_mean_accepted_tokens']:.2f})."
                )
            what = f"drafted a {m['tree']}"
            if m.get("tree_depth") == 0:
                what = (
                    "decoded without drafting (the cost model predicted no tree faster than plain decoding)"
                )
            out.append(
                f"- **{display_name(m)}** {what}; measured {m['mean_accepted_tokens']:.2f} "
                f"tokens/step, {_fmt(m['speedup'])}x over `generate`.{gated}"
            )
    return (["", "Trees (`tree=auto` unless the decode options force one):"] + out) if out else []


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 2) + [":---:"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], title: str | None = None) -> str:
    s, t = report["settings"], report["target"]
    title = title or "selfspec acceptance report"
    lines = [
        f"## {title}",
        "",
        f"Target `{t['name_or_path']}` ({t['dtype']}, {t['device']}); {s['num_prompts']} held-out prompts, "
        f"max_new_tokens={s['max_new_tokens']}, batch 1, temperature 0; torch {s['torch']}, "
        f"transformers {s['transformers']}, {s['threads']} threads.",
        "",
        markdown_table(*table_rows(report)),
        "",
        *_dtype_lines(report),
        FOOTNOTES.format(min_rounds=MIN_ROUNDS),
        *_tree_lines(report),
    ]
    for name, why in report.get("skipped", {}).items():
        lines.append(f"- `{name}` not run: {why}.")
    return "\n".join(lines) + "\n"


def plot_acceptance(report: dict[str, Any], path: str | Path) -> None:
    """Left: acceptance by draft position per method. Right: mean accepted tokens per method, with speed-ups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.1, 1]})
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(report["methods"]))]
    _plot_curves(ax1, report["methods"], colors)
    _plot_bars(ax2, report["methods"], colors)
    t, s = report["target"], report["settings"]
    fig.suptitle(
        f"{Path(t['name_or_path']).name} ({t['device']}): {s['num_prompts']} prompts, "
        f"max_new_tokens={s['max_new_tokens']}, greedy",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _plot_curves(ax: Any, methods: list[dict[str, Any]], colors: list[Any]) -> None:
    """Acceptance by position; selfspec solid, transformers dashed; curves dodged along x so that methods with
    equal rates (all 0 or all 1) stay visible side by side."""
    shown = [
        i for i, m in enumerate(methods) if any(a is not None for a in m["acceptance_by_position"] or [])
    ]
    for j, i in enumerate(shown):
        m = methods[i]
        dx = (j - (len(shown) - 1) / 2) * 0.04
        pts = [
            (k + 1 + dx, a, _enough_rounds(m, k))
            for k, a in enumerate(m["acceptance_by_position"])
            if a is not None
        ]
        style = dict(marker="osD^vP*Xh<>"[j % 11], markersize=6, color=colors[i], alpha=0.9)
        ax.plot(
            [x for x, _, _ in pts],
            [y for _, y, _ in pts],
            "-" if m["method"] == "selfspec" else "--",
            label=display_name(m),
            **style,
        )
        few = [(x, y) for x, y, ok in pts if not ok]
        if few:  # hollow: too few rounds reached the position to trust the rate
            ax.plot(
                [x for x, _ in few], [y for _, y in few], linestyle="none", markerfacecolor="white", **style
            )
    ax.set(
        xlabel="draft position k",
        ylabel=f"acceptance rate at k (given k-1 accepted; hollow: < {MIN_ROUNDS} rounds)",
        ylim=(-0.03, 1.05),
        title="Acceptance by draft position",
    )
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if shown:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no method drafted tokens", ha="center", va="center", transform=ax.transAxes)


def _plot_bars(ax: Any, methods: list[dict[str, Any]], colors: list[Any]) -> None:
    """Mean accepted tokens per method (top to bottom in table order), labelled with the speed-up."""
    vals = [m["mean_accepted_tokens"] for m in methods][::-1]
    bars = ax.barh([display_name(m) for m in methods][::-1], vals, color=colors[::-1])
    for bar, m in zip(bars, methods[::-1], strict=True):
        note = f" {m['mean_accepted_tokens']:.2f}  ({_fmt(m['speedup'])}x)"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, note, va="center", fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set(
        xlabel="tokens per target forward (speed-up in brackets)",
        title="Mean accepted tokens",
        xlim=(0, max(vals + [1.0]) * 1.35),
    )
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)


def write_outputs(report: dict[str, Any], output_dir: str | Path, title: str | None = None) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench.json", report)
    atomic_write_text(out / "bench.md", render_markdown(report, title))
    plot_acceptance(report, out / "acceptance.png")


# ---------------------------------------------------------------------------------------------------------
# Merging per-drafter reports into one table.


def merge_reports(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One report from several ``bench.json`` files: baseline rows once (from the first report that has them),
    every selfspec / assisted row, each with the speed-up measured against its own run's target."""
    reports = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise SelfspecError(
                f"bench report {str(p)!r} does not exist: run decode/bench/run.py or train/run.py first"
            )
        reports.append(json.loads(p.read_text()))
    if not reports:
        raise SelfspecError("no bench.json given to merge")
    merged = {**reports[0], "methods": [], "skipped": {}, "sources": [str(p) for p in paths]}
    seen = set()
    for rep in reports:
        for m in rep["methods"]:
            if m["name"] in seen:
                continue
            seen.add(m["name"])
            merged["methods"].append(m)
        merged["skipped"].update({k: v for k, v in rep.get("skipped", {}).items() if k not in seen})
    order = {m: i for i, m in enumerate(METHODS)}
    merged["methods"].sort(key=lambda m: order.get(m["method"], 9))
    merged["settings"] = {
        **reports[0]["settings"],
        "num_prompts": min(r["settings"]["num_prompts"] for r in reports),
    }
    return merged
