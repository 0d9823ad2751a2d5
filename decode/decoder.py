"""The public decoder: lossless speculative decoding with a selfspec drafter (or any draft causal LM).

One loop for every drafter (gpt-fast's ``speculative_decode`` shape): ``prefill`` the prompt, then repeat
``draft`` (the proposer builds a tree rooted at the pending token), ``verify`` (one target forward over the
tree with a 4D ancestor mask and tree position ids, passed as arguments), ``accept`` (greedy match or
recursive rejection sampling, decode/verify.py) and ``commit`` (the target's and drafter's KV caches keep
exactly the accepted path, decode/kv.py). Rows of a batch advance by different amounts over one shared cache
with per-row lengths and validity masks; positions follow the attention mask, as HF does for left padding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from selfspec.decode.gate import SpeculationGate
from selfspec.decode.kv import KVState
from selfspec.decode.plan import TreeChoice
from selfspec.decode.propose import CachedProposer, MedusaProposer, NullProposer
from selfspec.decode.propose_dflash import DFlashProposer
from selfspec.decode.tree import COMPACT_CHOICES, DraftTree, ancestor_mask
from selfspec.decode.verify import Acceptance, greedy_accept, sample_accept, warp_probs
from selfspec.heads.features import target_forward
from selfspec.sampling import sample
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

# Per drafter type: (depth, topk, total_tokens): EAGLE-2-sized trees of 16 nodes, for GPUs, where verifying 16 nodes
# costs close to a 1-token forward; on a 2-core CPU it costs ~2.2x (`python -m selfspec.heads.bench_heads`).
DEFAULTS = {"eagle": (5, 4, 16), "eagle3": (5, 4, 16), "draft_model": (4, 1, 5), "medusa": (4, 0, 0)}
DEFAULTS["dflash"] = (0, 1, 0)  # a chain of block_size - 1 drafts from one forward (decode/propose_dflash.py)


@dataclass
class DecodeStats:
    """``mean_accepted_tokens``: tokens per speculative verification forward per row, the bonus included
    (drafter quality, before EOS/length cuts; the adaptive gate's plain steps are counted in ``plain_steps``).
    ``acceptance_by_position[k]``: of the steps whose walk reached a node at depth k that had drafted children,
    the fraction that accepted one (the (k+1)-th drafted token)."""

    new_tokens: int = 0
    target_forwards: int = 0
    mean_accepted_tokens: float = 0.0
    acceptance_by_position: list[float] = field(default_factory=list)
    offered_by_position: list[int] = field(default_factory=list)  # the counts behind the rates above
    accepted_by_position: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0
    steps: int = 0
    plain_steps: int = 0  # steps the adaptive gate decoded without drafting (left out of the rates above)


@dataclass
class GenerateResult:
    sequences: torch.Tensor  # (B, prompt + new), right-padded with pad after EOS, as model.generate
    stats: DecodeStats


class SpeculativeDecoder:
    """``SpeculativeDecoder(target, drafter, depth=, topk=, total_tokens=, tree=, medusa_choices=)``.

    ``drafter``: a selfspec ``Drafter`` (medusa, eagle, eagle3, draft_model) bound to ``target``, or a plain
    transformers causal LM sharing the target's vocabulary (used as a draft model). Options: ``depth`` (draft
    levels), ``topk`` (children per expanded node; 1 = a chain), ``total_tokens`` (tree size with the root),
    ``tree=False`` (shorthand for ``topk=1``), ``medusa_choices`` (Medusa paths of top-k choice indices),
    ``adaptive`` (measure while decoding whether the tree pays and decode without drafting while it does not,
    ``decode/gate.py``; default: on for the cost model's tree, off for a forced one; always off for seeded
    sampling, whose draws must repeat).
    """

    def __init__(
        self, target: nn.Module, drafter: nn.Module | None, tokenizer: Any = None, **options: Any
    ) -> None:
        self.target, self.drafter, self.tokenizer = target, drafter, tokenizer
        if drafter is None:  # the target alone, through this loop (what a speculative step is compared with)
            self.kind = "none"
        else:
            self.kind = getattr(drafter, "drafter_type", "") or "draft_model"
            _check_fit(target, drafter, self.kind)
        unknown = set(options) - {"depth", "topk", "total_tokens", "tree", "medusa_choices", "adaptive"}
        if unknown:
            raise SelfspecError(
                f"unknown decoder options {sorted(unknown)}: use depth, topk, total_tokens, "
                "tree, medusa_choices, adaptive"
            )
        self.options = options
        self._choice: TreeChoice | None = None
        self._gates: dict[int, SpeculationGate] = {}  # per batch size, kept across generate calls
        gen_cfg = getattr(target, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = getattr(target.config, "eos_token_id", None)
        self.eos_ids = _as_list(eos)
        pad = getattr(gen_cfg, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    @classmethod
    def from_pretrained(cls, drafter_path: str, device: str = "auto", dtype: str = "auto", **options: Any):
        """Load the target named in the drafter folder's config.json, then the drafter (checked against it)."""
        from selfspec.heads import load_drafter
        from selfspec.heads.formats import target_name_of
        from selfspec.target import load_target

        name = target_name_of(drafter_path)  # selfspec folders and published third-party layouts alike
        if not name:
            raise SelfspecError(
                f"{drafter_path} does not name its target: pass the target to SpeculativeDecoder"
            )
        target, tokenizer = load_target(name, device=device, dtype=dtype)
        drafter = load_drafter(drafter_path, target, tokenizer=tokenizer)
        return cls(target, drafter, tokenizer=tokenizer, **options)

    # -- the tree ------------------------------------------------------------------------------------------

    def tree_choice(self) -> TreeChoice:
        """The tree this decoder drafts: the user's (``depth/topk/total_tokens/medusa_choices``, ``tree=``)
        or, by default (``tree="auto"``), the one the measured costs and the drafter's acceptance statistics
        say is fastest here (``decode/plan.py``); measured once per machine and cached."""
        if self._choice is None:
            from selfspec.decode.measure import choose_tree

            self._choice = (
                TreeChoice(0, 1, 1, source="no drafter") if self.drafter is None else choose_tree(self)
            )
        return self._choice

    def _proposer(self):
        choice = self.tree_choice()
        if choice.depth == 0:
            return NullProposer()
        if self.kind == "medusa":
            return MedusaProposer(self.drafter, choice.paths)
        if self.kind == "dflash":
            return DFlashProposer(self.drafter, choice.depth, choice.topk, choice.total_tokens)
        drafter = self.drafter if hasattr(self.drafter, "drafter_type") else _PlainDraft(self.drafter)
        return CachedProposer(drafter, self.kind, choice.depth, choice.topk, choice.total_tokens)

    def gate(self, batch: int) -> SpeculationGate | None:
        """The adaptive gate for this batch size (None: draft every step), seeded with the tree's prediction."""
        choice = self.tree_choice()
        on = self.options.get("adaptive")
        if on is None:
            on = choice.source == "cost model"
        if not on or choice.depth == 0:
            return None
        if batch not in self._gates:
            plain = (
                choice.speedup * choice.ms_per_step / choice.tokens_per_step if choice.ms_per_step else 0.0
            )
            self._gates[batch] = SpeculationGate.from_prediction(
                plain, choice.ms_per_step, choice.tokens_per_step
            )
        return self._gates[batch]

    def fixed_choice(self, default: bool = False) -> TreeChoice | None:
        """The tree the options force, or None when the cost model decides (``tree`` unset or ``"auto"``);
        ``default``: the family's default tree where the options force nothing."""
        o = self.options
        explicit = any(o.get(k) is not None for k in ("depth", "topk", "total_tokens", "medusa_choices"))
        if not explicit and o.get("tree") in (None, "auto") and not default:
            return None
        if self.kind == "medusa":
            choices = o.get("medusa_choices") or COMPACT_CHOICES
            if o.get("tree") is False:
                choices = [(0,) * d for d in range(1, self.drafter.config.num_heads + 1)]
            choices = [tuple(c) for c in choices if len(c) <= self.drafter.config.num_heads]
            depth = max(len(c) for c in choices)
            return TreeChoice(depth, 0, len(choices) + 1, choices, source="fixed")
        if self.kind == "dflash":
            d = DFlashProposer.from_options(self.drafter, o)
            return TreeChoice(d.depth, d.topk, d.total, source="fixed")
        depth, topk, total = DEFAULTS[self.kind]
        topk = 1 if o.get("tree") is False else o.get("topk") or topk
        if o.get("tree") is True and topk == 1:
            topk = 4
        depth = o.get("depth") or depth
        total = depth + 1 if topk == 1 else o.get("total_tokens") or max(total, depth + 1)
        return TreeChoice(depth, topk, total, source="fixed")

    @torch.inference_mode()  # no autograd bookkeeping: plain steps at 1.07x of no_grad's speed here
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        callback: Callable[[list[list[int]]], None] | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> GenerateResult:
        """Decode like ``target.generate``; ``callback`` gets each step's new token ids per row.

        ``eos_token_id`` / ``pad_token_id`` override the target's generation config, as in HF.
        """
        t0 = time.perf_counter()
        run = _Run(self, input_ids, attention_mask, max_new_tokens, temperature, top_p, top_k, seed,
                   eos_token_id, pad_token_id, gate=self.gate(input_ids.shape[0]))  # fmt: skip
        for step in run.steps():
            if callback is not None:
                callback(step)
        result = run.result()
        result.stats.wall_time_s = time.perf_counter() - t0
        return result

    @torch.inference_mode()
    def stream(self, input_ids: torch.Tensor, **kwargs: Any) -> Iterator[list[list[int]]]:
        """Yield, after every target forward, the new token ids of each row (empty lists once a row is done)."""
        run = _Run(self, input_ids, **kwargs, gate=self.gate(input_ids.shape[0]))
        yield from run.steps()


class _Run:
    """State of one ``generate`` call: target cache, proposer, output buffer, per-row progress."""

    def __init__(self, dec, input_ids, attention_mask=None, max_new_tokens=128, temperature=0.0, top_p=1.0,
                 top_k=0, seed=None, eos_token_id=None, pad_token_id=None, proposer=None,
                 gate=None) -> None:  # fmt: skip
        self.dec = dec
        self.gate = None if temperature > 0 and seed is not None else gate  # seeded draws must repeat
        eos_ids = dec.eos_ids if eos_token_id is None else _as_list(eos_token_id)
        self.pad_id = dec.pad_id if pad_token_id is None else pad_token_id
        dev = dec.target.get_output_embeddings().weight.device
        self.ids = input_ids.to(dev)
        b, p = self.ids.shape
        mask = torch.ones_like(self.ids) if attention_mask is None else attention_mask.to(dev)
        self.mask = mask.bool()
        self.max_new = max_new_tokens
        self.sampling = temperature > 0
        self.warp = (lambda lg: warp_probs(lg, temperature, top_k, top_p)) if self.sampling else None
        self.gen = None
        if seed is not None:
            self.gen = torch.Generator(device=dev)
            self.gen.manual_seed(seed)
        self.proposer = proposer or dec._proposer()
        self.layers = self.proposer.feature_layers()
        self.out = torch.full((b, p + max_new_tokens + 128), self.pad_id, dtype=torch.long, device=dev)
        self.out[:, :p] = self.ids
        self.n_out = torch.zeros(b, dtype=torch.long, device=dev)
        self.done = torch.zeros(b, dtype=torch.bool, device=dev)
        self.all_done = False  # self.done on the host, read with the step's one transfer
        self.eos = torch.tensor(eos_ids or [-1], device=dev)
        self.stats = DecodeStats()
        self.tok_sum = torch.zeros((), device=dev)
        self.rows_sum = torch.zeros((), device=dev)
        self.offered = torch.zeros(64, device=dev)
        self.accepted = torch.zeros(64, device=dev)

    def steps(self) -> Iterator[list[list[int]]]:
        if self.max_new <= 0:
            return
        first = self._prefill()
        new, _ = self._emit(first[:, None], torch.ones_like(self.n_out), torch.zeros_like(self.n_out))
        yield new
        first_step = True
        while not self.all_done:
            t0 = time.perf_counter()
            spec = self.gate is None or self.gate.speculate()
            if spec:
                tree = self.proposer.draft(self.root, self.root_pos, self.warp, self.gen)
            else:  # a plain step: the root alone; the proposer catches up on these entries at its next draft
                tree = DraftTree(self.root[:, None], torch.full_like(self.root[:, None], -1), 0)
                self.stats.plain_steps += 1
            acc, hidden = self._verify(tree)
            emitted = _emitted(tree, acc)  # (B, D+1)
            was_done = self.done.clone()
            new, acc.n_host = self._emit(emitted, acc.n_accepted + 1, acc.n_accepted)  # the step's one sync
            if spec:
                self._count(acc, ~was_done)
            self.kv.commit(acc.path.clamp(min=0), acc.n_accepted + 1, [n + 1 for n in acc.n_host])
            self.proposer.update(acc, tree, hidden, self.root_pos)
            self.root = acc.bonus
            self.root_pos = self.root_pos + acc.n_accepted + 1
            if self.gate is not None and not first_step:  # the first draft also feeds the whole prompt
                live = sum(1 for row in new if row)
                self.gate.record(spec, (time.perf_counter() - t0) * 1e3, sum(map(len, new)) / max(live, 1))
            first_step = False
            yield new

    def _prefill(self) -> torch.Tensor:
        """Run the prompt; return the first new token (B,) and set up the target cache and the proposer."""
        b, p = self.ids.shape
        dev = self.ids.device
        pos = (self.mask.long().cumsum(-1) - 1).clamp(min=0)  # as HF does for left padding
        causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
        new = (causal & self.mask[:, None, :]) | torch.eye(p, dtype=torch.bool, device=dev)  # pads see self
        target = self.dec.target
        # A live row commits at most p + max_new + tree_size entries; one pending tree rides past them.
        tree = self.proposer.tree_size
        capacity = p + self.max_new + 2 * tree + 2
        layers = target.config.get_text_config().num_hidden_layers
        self.kv = KVState.empty(b, dev, layers, capacity, reserve=tree + 1)
        out = target_forward(
            target,
            self.ids,
            self.kv.mask(new),
            pos,
            self.kv.cache,
            self.layers,
            logits_to_keep=1,
            own_head=True,
        )
        self.kv.start(self.mask)
        self.stats.target_forwards += 1
        first = self._pick(out.logits[:, -1])  # (B,)
        self.proposer.start(self.ids, self.mask, pos, out.hidden, first, max_len=capacity)
        self.root, self.root_pos = first, pos[:, -1] + 1
        return first

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.sampling:
            return logits.argmax(-1)
        return sample(self.warp(logits), self.gen)

    def _verify(self, tree: DraftTree) -> tuple[Acceptance, tuple[torch.Tensor, ...]]:
        anc = ancestor_mask(tree.parents, tree.depth)  # (B, N, N)
        pos = self.root_pos[:, None] + anc.sum(-1) - 1  # root_pos + depth
        out = target_forward(
            self.dec.target, tree.tokens, self.kv.mask(anc), pos, self.kv.cache, self.layers, own_head=True
        )
        self.stats.target_forwards += 1
        width = _width(tree, self.proposer)
        if self.sampling:
            acc = sample_accept(tree, self.warp(out.logits), width, self.gen)
        else:
            acc = greedy_accept(tree, out.logits, width)
        return acc, out.hidden

    def _emit(
        self, emitted: torch.Tensor, count: torch.Tensor, accepted: torch.Tensor
    ) -> tuple[list[list[int]], list[int]]:
        """Append ``emitted[b, :count[b]]`` to each unfinished row, cut at EOS and at ``max_new_tokens``.

        Returns the new tokens per row and ``accepted`` (B,) on the host: everything the step needs on the
        host comes back in this one transfer (one device sync per step on a GPU)."""
        b, e = emitted.shape
        j = torch.arange(e, device=emitted.device)[None]
        is_eos = torch.isin(emitted, self.eos) & (j < count[:, None])
        first_eos = torch.where(is_eos.any(-1), is_eos.long().argmax(-1) + 1, count)
        n = torch.minimum(first_eos, self.max_new - self.n_out).masked_fill(self.done, 0)  # (B,)
        keep = j < n[:, None]
        idx = self.ids.shape[1] + self.n_out[:, None] + j
        self.out.scatter_(1, idx, torch.where(keep, emitted, self.pad_id))
        self.n_out += n
        self.done |= (is_eos & keep).any(-1) | (self.n_out >= self.max_new)
        self.stats.steps += 1
        host = torch.cat([n, accepted, self.done.long(), emitted.reshape(-1)]).tolist()
        n_h, acc_h, done_h, flat = host[:b], host[b : 2 * b], host[2 * b : 3 * b], host[3 * b :]
        self.all_done = all(done_h)
        return [flat[i * e : i * e + k] for i, k in enumerate(n_h)], acc_h

    def _count(self, acc: Acceptance, live: torch.Tensor) -> None:
        d = acc.offered.shape[1]
        self.tok_sum += ((acc.n_accepted + 1) * live).sum()
        self.rows_sum += live.sum()
        self.offered[:d] += (acc.offered & live[:, None]).sum(0)
        self.accepted[:d] += (acc.accepted & live[:, None]).sum(0)

    def result(self) -> GenerateResult:
        p = self.ids.shape[1]
        width = p + int(self.n_out.max()) if self.n_out.numel() else p
        s = self.stats
        s.new_tokens = int(self.n_out.sum())
        s.mean_accepted_tokens = float(self.tok_sum / self.rows_sum.clamp(min=1))
        used = int((self.offered > 0).sum())
        s.acceptance_by_position = (self.accepted[:used] / self.offered[:used]).tolist()
        s.offered_by_position = [int(x) for x in self.offered[:used].tolist()]
        s.accepted_by_position = [int(x) for x in self.accepted[:used].tolist()]
        return GenerateResult(self.out[:, :width].clone(), s)


def _as_list(ids: int | list[int] | None) -> list[int]:
    return [ids] if isinstance(ids, int) else list(ids or [])


def _emitted(tree: DraftTree, acc: Acceptance) -> torch.Tensor:
    """(B, D+1): the accepted drafted tokens in order, then the bonus at index n_accepted."""
    toks = tree.tokens.gather(1, acc.path[:, 1:].clamp(min=0))  # (B, D)
    toks = torch.cat([toks, acc.bonus[:, None]], 1)
    j = torch.arange(toks.shape[1], device=toks.device)[None]
    return torch.where(j == acc.n_accepted[:, None], acc.bonus[:, None], toks)


def _width(tree: DraftTree, proposer) -> int:
    """The most children any node of the proposer's trees can have (static trees: computed once)."""
    return getattr(proposer, "width", proposer.topk)


class _PlainDraft(nn.Module):
    """A plain transformers causal LM behind the DraftModel call signature (returns logits)."""

    drafter_type = "draft_model"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, use_cache=True).logits  # fmt: skip


def _check_fit(target: nn.Module, drafter: nn.Module, kind: str) -> None:
    """Refuse a drafter whose vocabulary or hidden size is not the target's, with one clear error."""
    if kind not in DEFAULTS:
        raise SelfspecError(f"unknown drafter type {kind!r}: use one of {sorted(DEFAULTS)}")
    vocab = int(target.get_output_embeddings().weight.shape[0])
    tcfg = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    cfg = getattr(drafter, "config", None)
    if hasattr(drafter, "drafter_type"):
        mine = {"vocab": getattr(cfg, "vocab_size", 0), "hidden": getattr(cfg, "hidden_size", 0)}
    else:  # a plain causal LM: only its vocabulary must match
        mine = {"vocab": int(drafter.get_output_embeddings().weight.shape[0])}
    theirs = {"vocab": vocab, "hidden": int(tcfg.hidden_size)}
    bad = [k for k, v in mine.items() if v and v != theirs[k]]
    if bad:
        left = ", ".join(f"{k} {mine[k]}" for k in bad)
        right = ", ".join(f"{k} {theirs[k]}" for k in bad)
        raise SelfspecError(
            f"this {kind} drafter was built for another target ({left}) but the target has "
            f"{right}: use a drafter trained for this target"
        )
