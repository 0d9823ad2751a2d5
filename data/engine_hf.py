"""``data.engine=hf``: the target generates in-process with continuous batching over fixed slots.

``model.generate`` on a padded batch keeps every row running until the longest answer ends, so with answers
of varied length most of its work is padding (measured on the 2-core CPU: 85 tok/s for 32 rows x 256 new
tokens in bf16, of which 60% were past the row's end). Here ``slots`` rows decode together, one token per row
per forward, and a row whose answer ended takes the next prompt at once (prefilled in its own forward, several
prompts at a time). The KV cache is a preallocated ``SlotCache``; a 4D mask hides what each row has not
written. Greedy or sampled (temperature, top-p) exactly as ``selfspec.sampling.pick`` decides.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from selfspec.data.rollout import Output
from selfspec.sampling import pick
from selfspec.slots import SlotCache
from selfspec.target import output_logits


class HFEngine:
    """Continuous batching with a transformers model; ``generate`` answers a list of token prompts."""

    name = "hf"

    def __init__(self, model: PreTrainedModel, stop_ids: Sequence[int], pad_id: int, slots: int = 32) -> None:
        self.model, self.stops, self.pad_id, self.slots = model, list(stop_ids), pad_id, max(1, slots)
        self.device = model.get_output_embeddings().weight.device
        self.num_layers = model.config.get_text_config().num_hidden_layers

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_done: Callable[[int, Output], None] | None = None,
        stop_ids: Sequence[int] | None = None,
    ) -> list[Output]:
        """Answer every prompt (in any order internally); ``on_done(i, output)`` fires as prompt i finishes.

        ``stop_ids`` replaces the engine's stop tokens for this call (Magpie stops at the end of a user turn).
        """
        if not prompts:
            return []
        stops = list(self.stops if stop_ids is None else stop_ids)
        run = _Run(self, prompts, max_new_tokens, temperature, top_p, on_done, stops)
        run.loop()
        return run.outputs


class _Run:
    """One ``generate`` call: slot ownership, lengths, the queue and the outputs."""

    def __init__(self, eng: HFEngine, prompts, max_new, temperature, top_p, on_done, stops) -> None:
        self.eng, self.prompts, self.max_new = eng, [list(p) for p in prompts], max_new
        self.temperature, self.top_p, self.on_done = temperature, top_p, on_done
        n, dev = len(prompts), eng.device
        self.s = min(eng.slots, n)
        self.cache = SlotCache(eng.num_layers, self.s, max(map(len, self.prompts)) + max_new + 1)
        self.queue = deque(sorted(range(n), key=lambda i: -len(self.prompts[i])))  # longest first
        self.owner = [-1] * self.s  # request index per slot
        self.length = torch.zeros(self.s, dtype=torch.long, device=dev)  # tokens in the cache per slot
        self.next_tok = torch.full((self.s,), eng.pad_id, dtype=torch.long, device=dev)
        self.outputs: list[Output] = [([], False)] * n
        self.new: list[list[int]] = [[] for _ in range(self.s)]
        self.stops = torch.tensor(stops, device=dev)

    def loop(self) -> None:
        admit_at = max(1, self.s // 8)  # prefill a few prompts per forward, not one per freed slot
        while self.queue or any(o >= 0 for o in self.owner):
            free = [i for i, o in enumerate(self.owner) if o < 0]
            idle = len(free) == self.s
            if self.queue and (len(free) >= min(admit_at, len(self.queue)) or idle):
                self._prefill(free[: len(self.queue)])
            self._decode()

    def _prefill(self, rows: list[int]) -> None:
        """Load the next prompts into ``rows``; their first new token comes from the prompt's last logits."""
        reqs = [self.queue.popleft() for _ in rows]
        dev, pad = self.eng.device, self.eng.pad_id
        lens = torch.tensor([len(self.prompts[r]) for r in reqs], device=dev)
        p = int(lens.max())
        ids = torch.full((len(rows), p), pad, dtype=torch.long, device=dev)
        for i, r in enumerate(reqs):  # right padding: every row starts at position 0
            ids[i, : lens[i]] = torch.tensor(self.prompts[r], device=dev)
        pos = torch.arange(p, device=dev).expand(len(rows), p)
        causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
        mask = (causal & (pos < lens[:, None])[:, None, :]) | torch.eye(p, dtype=torch.bool, device=dev)
        rows_t = torch.tensor(rows, device=dev)
        self.cache.plan(pos, p, rows_t)
        hidden = self.eng.model.base_model(
            input_ids=ids, attention_mask=mask[:, None], position_ids=pos, past_key_values=self.cache,
            use_cache=True,
        ).last_hidden_state  # fmt: skip
        last = hidden[torch.arange(len(rows), device=dev), lens - 1]  # (R, H)
        first = pick(output_logits(self.eng.model, last), self.temperature, self.top_p)
        self.length[rows_t] = lens
        self.next_tok[rows_t] = first
        for i, slot in enumerate(rows):
            self.owner[slot], self.new[slot] = reqs[i], []
        self._advance(rows_t, first)

    def _decode(self) -> None:
        """One forward: every slot feeds its pending token; free slots feed a pad that nothing reads."""
        kv_len = int(self.length.max()) + 1
        keys = torch.arange(kv_len, device=self.length.device)
        mask = (keys[None, :] <= self.length[:, None])[:, None, None]  # (S, 1, 1, kv_len)
        self.cache.plan(self.length[:, None], kv_len)
        logits = self.eng.model(
            input_ids=self.next_tok[:, None], attention_mask=mask, position_ids=self.length[:, None],
            past_key_values=self.cache, use_cache=True,
        ).logits[:, -1]  # fmt: skip
        tok = pick(logits, self.temperature, self.top_p)
        live = torch.tensor([o >= 0 for o in self.owner], device=tok.device)
        self.length += live.long()
        self.next_tok = torch.where(live, tok, self.eng.pad_id)
        self._advance(live.nonzero()[:, 0], tok[live])

    def _advance(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Record each row's new token; free the rows that stopped or reached max_new_tokens."""
        stopped = torch.isin(tokens, self.stops).tolist()
        for slot, tok, stop in zip(rows.tolist(), tokens.tolist(), stopped, strict=True):
            self.new[slot].append(tok)
            if stop or len(self.new[slot]) >= self.max_new:
                req = self.owner[slot]
                self.outputs[req] = (self.new[slot], bool(stop))
                self.owner[slot], self.length[slot] = -1, 0
                self.next_tok[slot] = self.eng.pad_id
                if self.on_done is not None:
                    self.on_done(req, self.outputs[req])
