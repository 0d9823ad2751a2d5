"""The decoder's own efficiency, apart from any drafter: ``python decode/bench/oracle.py``.

An oracle drafter proposes the target's own greedy continuation (computed first by the same decoder without
speculation), so a chain of depth D is accepted whole (D + 1 tokens per target forward) by construction, and a
tree of N nodes holds that chain plus wrong siblings. What the step costs beyond the target's forward over its
nodes is the decoder's overhead: ``efficiency`` = measured tokens/s over the cost curve's ideal
``step_tokens / verify_ms(N)``, with the tokens each decoding step really got (the prefill's first token is no
step's; the ``tokens/step`` column counts it, as it always has). Two things keep those below
D + 1 that are not the decoder's doing: the last step is cut at ``max_new_tokens`` (128 = 14 x 9 + 2 at depth 8),
and in bf16 a block forward rounds differently from one-token steps, so an oracle token can lose a near-tie and
be rejected. The table also prints the ideal at D + 1 tokens per step, and the share of it that was reached.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from selfspec.decode.bench.prompts import encode_conversations, read_prompts_file
from selfspec.decode.decoder import SpeculativeDecoder, _Run
from selfspec.decode.measure import curve_for
from selfspec.decode.plan import best_paths
from selfspec.decode.propose import NullProposer
from selfspec.decode.tree import DraftTree, static_tree
from selfspec.target import EMBEDDED_TARGET, load_target
from selfspec.utils import dtype_name

logger = logging.getLogger(__name__)

PROMPTS = [
    "Explain how a bicycle stays upright, in a few paragraphs.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List ten tips for writing clean Python code, with one sentence each.",
    "Describe the water cycle to a ten-year-old.",
]


class OracleProposer:
    """Proposes the target's greedy continuation of the current sequence (batch 1): a chain of ``depth``, or a
    static tree whose rank-0 path is that continuation and whose other nodes are wrong on purpose.

    The continuation comes from ``continue_fn(ids, n)`` (plain greedy decoding through the same loop). When
    the sequence leaves it (in bf16 a block forward can flip a near-tie that one-token steps did not), it is
    recomputed from the new sequence; the time spent on that is ``excluded_s``, not the decoder's.
    """

    def __init__(self, paths: list[tuple[int, ...]], continue_fn, max_new: int) -> None:
        self.parents, self.depths, self.picks, self.depth = static_tree(paths)
        self.tree_size = len(self.parents)
        self.topk = int(torch.bincount(self.parents[1:]).max())
        self.on_path = _on_rank0_path(self.parents, self.picks)
        self.continue_fn, self.max_new = continue_fn, max_new
        self.seq: list[int] = []
        self.cont: list[int] = []  # greedy tokens after ``seq``
        self.excluded_s = 0.0

    def feature_layers(self) -> list[int]:
        return []

    def start(self, ids, valid, positions, feats, first, max_len: int = 0) -> None:
        if ids.shape[0] != 1:
            raise ValueError("the oracle drafter decodes one prompt at a time")
        self.seq = ids[0].tolist() + [int(first[0])]
        self._resync()

    def _resync(self) -> None:
        t0 = time.perf_counter()
        self.cont = self.continue_fn(self.seq, self.max_new + self.depth + 1)
        self.excluded_s += time.perf_counter() - t0

    def draft(self, root: torch.Tensor, root_pos: torch.Tensor, warp, gen) -> DraftTree:
        dev = root.device
        cont = torch.tensor(self.cont[: self.depth] + [0] * max(0, self.depth - len(self.cont)), device=dev)
        depth_of = self.depths.to(dev)
        right = torch.cat([root, cont])[depth_of]  # (N,) the continuation token at each node's depth
        wrong = (right + 1 + self.picks.to(dev)) % int(max(self.seq) + 2)  # never the continuation token
        tokens = torch.where(self.on_path.to(dev), right, wrong)
        tokens[0] = root[0]
        return DraftTree(tokens[None], self.parents.to(dev)[None], self.depth)

    def update(self, acc, tree, feats, root_pos) -> None:
        n = int(acc.n_accepted[0])
        emitted = tree.tokens[0, acc.path[0, 1 : n + 1]].tolist() + [int(acc.bonus[0])]
        self.seq += emitted
        if emitted == self.cont[: n + 1]:
            self.cont = self.cont[n + 1 :]
        else:  # the target's block forward chose otherwise at a near-tie: follow the new sequence
            self._resync()


def _on_rank0_path(parents: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    ok = torch.ones(len(parents), dtype=torch.bool)
    for i in range(1, len(parents)):
        ok[i] = bool(ok[parents[i]]) and int(picks[i]) == 0
    return ok


def shapes(depths: list[int], tree_nodes: int) -> list[tuple[str, list[tuple[int, ...]]]]:
    """Chains of the given depths, and a tree of ``tree_nodes`` nodes (4 wide, rank 0 most likely)."""
    out = [(f"chain depth {d}", [(0,) * k for k in range(1, d + 1)]) for d in depths]
    if tree_nodes > 1:
        p = [[0.6, 0.2, 0.1, 0.05]] * 8
        paths = [q for q, _ in best_paths(p, tree_nodes - 1, 8, 4)]
        out.append((f"tree {tree_nodes} nodes (depth {max(map(len, paths))})", paths))
    return out


def run(target, prompts: list[list[int]], max_new: int, depths: list[int], tree_nodes: int) -> list[dict]:
    dec = SpeculativeDecoder(target, None)  # no drafter of its own: the oracle proposes
    curve = curve_for(dec)
    rows: dict[str, dict] = {}
    for prompt in prompts:
        ids = torch.tensor([prompt], device=target.device)

        def greedy(seq: list[int], n: int) -> list[int]:  # plain greedy, through the same loop
            out, _ = _decode(dec, torch.tensor([seq], device=target.device), n, NullProposer())
            return out[0, len(seq) :].tolist()

        t0 = time.perf_counter()
        target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                        min_new_tokens=max_new, do_sample=False, pad_token_id=0)  # fmt: skip
        _add(rows, "target.generate", None, max_new, max_new, time.perf_counter() - t0)
        for name, paths in shapes(depths, tree_nodes):
            oracle = OracleProposer(paths, greedy, max_new)
            t0 = time.perf_counter()
            _, steps = _decode(dec, ids, max_new, oracle)
            _add(rows, name, paths, max_new, steps, time.perf_counter() - t0 - oracle.excluded_s)
    base = rows["target.generate"]["tokens"] / rows["target.generate"]["seconds"]
    for row in rows.values():
        tps = row["tokens"] / row["seconds"]
        row.update(tok_s=tps, speedup=tps / base, tokens_per_step=row["tokens"] / row["steps"])
        if row["paths"] is not None:
            n = len(row["paths"]) + 1
            depth = max(map(len, row["paths"]))
            ms = curve.verify(n)
            # tokens/s if a step cost only its verify forward: at the tokens each step really got (the last
            # step is cut at max_new_tokens; in bf16 a block can lose a near-tie; the prefill's token is no
            # step's), and at D + 1 by construction
            ideal = (row["tokens"] - len(prompts)) / row["steps"] / ms * 1e3
            full = (depth + 1) / ms * 1e3
            row.update(nodes=n, ideal_tok_s=ideal, efficiency=tps / ideal, ideal_speedup=ideal / base,
                       full_speedup=full / base, full_efficiency=tps / full)  # fmt: skip
    return list(rows.values())


def _decode(dec, ids, max_new, proposer) -> tuple[torch.Tensor, int]:
    run = _Run(dec, ids, max_new_tokens=max_new, eos_token_id=[], proposer=proposer)
    steps = sum(1 for _ in run.steps())
    return run.result().sequences, steps - 1  # the prefill's token is not a decoding step


def _add(rows, name, paths, tokens, steps, seconds) -> None:
    row = rows.setdefault(name, {"name": name, "paths": paths, "tokens": 0, "steps": 0, "seconds": 0.0})
    row["tokens"] += tokens
    row["steps"] += steps
    row["seconds"] += seconds


def render(rows: list[dict], header: str) -> str:
    lines = [header, "", "| method | nodes | tokens/step | tok/s | speed-up vs generate | ideal (cost curve) | "
             "efficiency | ideal at D + 1 tokens/step | of that |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if r["paths"] is None:
            lines.append(f"| {r['name']} | 1 | 1.00 | {r['tok_s']:.1f} | 1.00x | | | | |")
        else:
            lines.append(
                f"| {r['name']} | {r['nodes']} | {r['tokens_per_step']:.2f} | {r['tok_s']:.1f} | "
                f"{r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {100 * r['efficiency']:.0f}% | "
                f"{r['full_speedup']:.2f}x | {100 * r['full_efficiency']:.0f}% |"
            )
    lines += ["", "ideal: the cost curve's verify forward over the nodes, at the tokens each step got (efficiency: "
              "the decoder's own overhead); at D + 1: as if every step were accepted whole and never cut at "
              "max_new_tokens."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=EMBEDDED_TARGET)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompts", default=None, help="JSONL of chat prompts (default: four built-in ones)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--depths", type=int, nargs="*", default=[2, 4, 8])
    ap.add_argument("--tree-nodes", type=int, default=16)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    target, tok = load_target(args.target, device=args.device, dtype=args.dtype)
    convs = (
        read_prompts_file(args.prompts)
        if args.prompts
        else [[{"role": "user", "content": p}] for p in PROMPTS]
    )
    prompts = encode_conversations(tok, convs)
    with torch.inference_mode():
        _decode_warmup(target, prompts[0])
        rows = run(target, prompts, args.max_new_tokens, args.depths, args.tree_nodes)
    header = (
        f"Oracle drafter: {args.target}, {dtype_name(target.dtype)}, {target.device}, "
        f"{torch.get_num_threads()} threads, {len(prompts)} prompts x {args.max_new_tokens} new tokens, batch 1"
    )
    print(render(rows, header))  # noqa: T201 - the table is the product


def _decode_warmup(target, prompt: list[int]) -> None:
    ids = torch.tensor([prompt], device=target.device)
    target.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0
    )


if __name__ == "__main__":
    main()
