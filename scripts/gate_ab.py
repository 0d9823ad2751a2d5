"""The adaptive gate, measured: one drafter decoded with the gate as shipped, with its earlier rule (the two
arms' running estimates compared), and without the gate, against the target alone, interleaved prompt by prompt
in one process. (The memory lengths were measured the same way: README "The adaptive gate's memory".)

    python scripts/gate_ab.py --drafter outputs/eagle3/drafter [--prompts 8] [--rounds 2] [--other-kinds 0]
        [--max-new-tokens 128] [--dtype auto] [--contend ON,OFF]

Every row uses the cost model's tree (``tree=auto``); only the gate differs. ``--other-kinds N`` adds N prompts
of the shipped other-kinds set (code, math, two-turn), where drafting pays less and the gate earns its keep.
Prints a markdown table: tokens/s, speed-up over the target alone in the same run, new tokens per target forward,
and the steps the gate left plain. Run it alone: the rows are wall times. ``--contend 5,15`` runs it beside a
process that keeps one core busy for 5 s in every 20, a host with other work, as a cluster node or a laptop is.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time

import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.decode.bench.prompts import load_prompts_file, prompts_from_dataset_dir
from selfspec.decode.bench.setup import dataset_of_drafter
from selfspec.decode.gate import DECAY_MS, DECAY_TOKENS, SpeculationGate


class RunningEstimatesGate(SpeculationGate):
    """The gate's first rule: the two arms' running estimates set against each other, whenever measured."""

    def ratio(self) -> float:
        r = super().ratio()
        return r if r in (0.0, math.inf) else (self.spec_tokens / self.spec_ms) * self.plain_ms


# (gate class, decay of the step times, decay of the speculative step's tokens); None: no gate
ARMS = {
    "gate (shipped)": (SpeculationGate, DECAY_MS, DECAY_TOKENS),
    "gate, running estimates compared (before)": (RunningEstimatesGate, DECAY_MS, DECAY_TOKENS),
    "no gate": None,
}


def _burn(on_s: float, off_s: float) -> None:
    """Keep one core busy ``on_s`` seconds in every ``on_s + off_s``, until terminated."""
    while True:
        t_end = time.perf_counter() + on_s
        while time.perf_counter() < t_end:
            pass
        time.sleep(off_s)


def run_set(decs: dict[str, SpeculativeDecoder], prompts: list[list[int]], rounds: int, max_new: int) -> dict:
    totals = {name: {"tokens": 0, "seconds": 0.0, "forwards": 0, "plain": 0, "steps": 0} for name in decs}
    names = list(decs)
    device = next(iter(decs.values())).target.device
    for r in range(rounds):
        for i, p in enumerate(prompts):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:  # the order rotates, so no arm always runs first
                t0 = time.perf_counter()
                res = decs[name].generate(
                    torch.tensor([p], device=device), max_new_tokens=max_new, eos_token_id=[]
                )
                t = totals[name]
                t["seconds"] += time.perf_counter() - t0
                t["tokens"] += res.stats.new_tokens
                t["forwards"] += res.stats.target_forwards
                t["plain"] += res.stats.plain_steps
                t["steps"] += res.stats.steps
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--other-kinds", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--contend", default=None, help="ON,OFF seconds of one busy core beside the run")
    args = ap.parse_args()
    base = SpeculativeDecoder.from_pretrained(args.drafter, dtype=args.dtype)
    target, drafter = base.target, base.drafter
    decs = {"target alone": SpeculativeDecoder(target, None)}
    decs.update(
        {name: SpeculativeDecoder(target, drafter, adaptive=d is not None) for name, d in ARMS.items()}
    )
    sets = {"eval split": prompts_from_dataset_dir(dataset_of_drafter(args.drafter), args.prompts)}
    if args.other_kinds:
        sets["other kinds"] = load_prompts_file("other_kinds", base.tokenizer, args.other_kinds)
    warm = sets["eval split"][0]
    for dec in decs.values():  # untimed warm-up
        dec.generate(torch.tensor([warm], device=target.device), max_new_tokens=16, eos_token_id=[])
    for name, arm in ARMS.items():  # the gates persist across calls: fresh ones, with each arm's rule
        if arm is not None:
            cls, decay_ms, decay_tokens = arm
            decs[name]._gates.clear()
            seed = decs[name].gate(1)
            decs[name]._gates[1] = cls(seed.plain_ms, seed.spec_ms, seed.spec_tokens, decay_ms=decay_ms,
                                       decay_tokens=decay_tokens)  # fmt: skip
    tree = base.tree_choice().describe()
    contend = ""
    if args.contend:
        on_s, off_s = map(float, args.contend.split(","))
        burner = multiprocessing.Process(target=_burn, args=(on_s, off_s), daemon=True)
        burner.start()
        contend = f", beside one core busy {on_s:g} s in every {on_s + off_s:g}"
    print(f"{args.drafter}: {tree}; {args.max_new_tokens} new tokens, batch 1, {target.dtype}, "
          f"{args.rounds} interleaved rounds{contend}\n")  # fmt: skip
    print("| prompts | decoder | tokens/s | speed-up | tokens / forward | plain steps |")
    print("|---|---|---:|---:|---:|---:|")
    for label, prompts in sets.items():
        totals = run_set(decs, prompts, args.rounds, args.max_new_tokens)
        ref = totals["target alone"]["tokens"] / totals["target alone"]["seconds"]
        for name, t in totals.items():
            tps = t["tokens"] / t["seconds"]
            print(f"| {label}, {len(prompts)} | {name} | {tps:.1f} | {tps / ref:.2f}x | "
                  f"{t['tokens'] / max(t['forwards'], 1):.2f} | {t['plain']} of {t['steps']} |")  # fmt: skip


if __name__ == "__main__":
    main()
