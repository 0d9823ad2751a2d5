"""The target answers conversations: batched generation (left padding, KV cache) turn by turn.

Token layout of one sample: the chat template is rendered once with a sentinel in place of every assistant
message, and cut at the sentinels into template pieces ``P0, P1, ..., Pn``. The sample is
``tok(P0) + gen1 + tok(P1) + gen2 + ... + genN`` where ``genK`` are the tokens the target generated (ending
with its end-of-turn token when it stopped by itself) and ``PK`` loses its leading end-of-turn text when the
target already produced it. The context of turn K is exactly the sample's prefix, so a drafter trains on the
very token sequences the target read and wrote. ``loss_mask`` is 1 on the ``genK`` tokens and 0 on template
and user tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from selfspec.data.prompts import Conversation
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

_SENTINEL = "@@SELFSPEC_ASSISTANT_{}@@"

Output = tuple[
    list[int], bool
]  # an engine's answer: new tokens (up to and including the stop), stopped by itself


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0


@dataclass
class Sample:
    """One conversation written by the target: token ids, a loss mask, and the first prompt's length."""

    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    prompt_len: int = 0
    turns: int = 0
    unfinished: int = 0  # assistant turns cut by max_new_tokens


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-turn ids: the tokenizer's eos and whatever the model's generation config lists."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    ids.discard(None)
    if not ids:
        raise SelfspecError("the target's tokenizer has no eos token: set one so generation can stop")
    return sorted(ids)


def finish_output(
    ids: list[int], stopped: bool, stops: Sequence[int], stop_reason: int | None = None
) -> Output:
    """One engine answer in the layout every engine returns: a stopped answer ends with its stop token.

    Servers differ on whether the stop token comes back with the answer; where it does not, the one that
    stopped it (``stop_reason``, else the first stop id) is appended, as the target wrote it. An answer that
    holds a stop token before its end is cut there (a server that ignored ``stop_token_ids``).
    """
    stop_set = set(stops)
    cut = next((j for j, t in enumerate(ids) if t in stop_set), None)
    if cut is not None:
        return ids[: cut + 1], True
    if stopped:
        return [*ids, stop_reason if stop_reason in stop_set else stops[0]], True
    return ids, False


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    stop_ids: Sequence[int],
) -> list[tuple[list[int], bool]]:
    """Generate for a batch of token prompts; return per prompt (new tokens up to and incl. the stop, stopped)."""
    pad = pad_id(tokenizer)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every row's next token is at the same column
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    sample = sampling.temperature > 0
    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sample,
        temperature=sampling.temperature if sample else None,
        top_p=sampling.top_p if sample else None,
        top_k=0 if sample else None,  # the target's own distribution: no hidden top-k
        eos_token_id=list(stop_ids),
        pad_token_id=pad,
    )
    out = model.generate(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device), generation_config=config
    )
    new = out[:, width:].tolist()  # (B, <= max_new_tokens)
    stops = set(stop_ids)
    results = []
    for row in new:
        end = next((j for j, t in enumerate(row) if t in stops), None)
        results.append((row[: end + 1], True) if end is not None else (row, False))
    return results


def template_pieces(tokenizer: PreTrainedTokenizerBase, conv: Conversation) -> list[str]:
    """Render ``conv`` with a sentinel for every assistant turn (and one after the last user turn); cut there."""
    messages, k = [], 0
    for m in conv:
        if m["role"] == "assistant":
            continue
        messages.append(dict(m))
        if m["role"] == "user":
            messages.append({"role": "assistant", "content": _SENTINEL.format(k)})
            k += 1
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    pieces = []
    for i in range(k):
        head, sep, text = text.partition(_SENTINEL.format(i))
        if not sep:
            raise SelfspecError("the target's chat template drops assistant messages; it cannot be used")
        pieces.append(head)
    return pieces  # the template text after the last answer is dropped: samples end with the target's turn


class Rollout:
    """Turn-by-turn generation over many conversations through an engine (``builder.make_engine``: hf, vllm
    or openai); ``on_batch(turns, tokens)`` reports progress as answers complete."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: Sampling,
        max_turns: int,
        engine: Any,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        self.model, self.tok, self.sampling = model, tokenizer, sampling
        self.max_turns, self.engine, self.on_batch = max_turns, engine, on_batch
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.stop_texts = {i: tokenizer.decode([i]) for i in self.stop_ids}
        self.max_ctx = int(getattr(model.config, "max_position_embeddings", 1 << 30))

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def fits(self, conv: Conversation) -> bool:
        """Whether the first prompt of ``conv`` plus max_new_tokens fits the target's context."""
        first = template_pieces(self.tok, conv)[0]
        return len(self.encode(first)) + self.sampling.max_new_tokens <= self.max_ctx

    def run(self, convs: Sequence[Conversation]) -> list[Sample]:
        pieces = [template_pieces(self.tok, c)[: self.max_turns] for c in convs]
        samples = [Sample() for _ in convs]
        last_stop: list[int | None] = [None] * len(convs)
        for turn in range(max(len(p) for p in pieces)):
            todo = []  # (conv index, context ids)
            for i, ps in enumerate(pieces):
                if turn >= len(ps) or (turn > 0 and samples[i].turns < turn):
                    continue
                text = ps[turn]
                stop_text = self.stop_texts.get(last_stop[i]) if last_stop[i] is not None else None
                if stop_text and text.startswith(stop_text):  # the target already wrote its end-of-turn
                    text = text[len(stop_text) :]
                ctx = samples[i].input_ids + self.encode(text)
                if len(ctx) + self.sampling.max_new_tokens > self.max_ctx:
                    if turn == 0:
                        raise SelfspecError(
                            f"prompt of {len(ctx)} tokens does not fit the context {self.max_ctx}"
                        )
                    continue  # later turns that no longer fit end the conversation early
                samples[i].input_ids, samples[i].loss_mask = (
                    ctx,
                    samples[i].loss_mask + [0] * (len(ctx) - len(samples[i].loss_mask)),
                )
                if turn == 0:
                    samples[i].prompt_len = len(ctx)
                todo.append(i)
            self._generate(todo, samples, last_stop)
        return samples

    def _generate(self, todo: list[int], samples: list[Sample], last_stop: list[int | None]) -> None:
        """Answer the pending turn of every conversation in ``todo`` (one engine call: its batching)."""

        def done(_: int, out: tuple[list[int], bool]) -> None:
            if self.on_batch:
                self.on_batch(1, len(out[0]))

        s = self.sampling
        outs = self.engine.generate(
            [samples[i].input_ids for i in todo], s.max_new_tokens, s.temperature, s.top_p, on_done=done
        )
        for i, (new, stopped) in zip(todo, outs, strict=True):
            smp = samples[i]
            smp.input_ids = smp.input_ids + new
            smp.loss_mask = smp.loss_mask + [1] * len(new)
            smp.turns += 1
            smp.unfinished += not stopped
            last_stop[i] = new[-1] if stopped else None
