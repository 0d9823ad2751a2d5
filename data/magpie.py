"""The target writes its own prompts (Magpie, Xu et al. 2024, arXiv:2406.08464).

An aligned chat model given only the template's opening of a user turn (after the template's system turn, if
it adds one) writes a plausible user message and closes the turn itself. Candidates are filtered: the target
must have ended the turn, the text must be printable, within the length bounds and not a duplicate.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selfspec.data.config import MagpieConf
from selfspec.data.rollout import stop_token_ids
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

_SENTINEL = "@@SELFSPEC_USER@@"


def user_prefix(tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> tuple[str, str]:
    """The template text before a user message (system turn included) and the text right after it.

    ``system``: a steering system message (Magpie's way to ask for prompts of one kind); None keeps the
    template's own default system turn, if any.
    """
    messages = [{"role": "system", "content": system}] if system else []
    text = tokenizer.apply_chat_template(messages + [{"role": "user", "content": _SENTINEL}], tokenize=False)
    head, sep, tail = text.partition(_SENTINEL)
    if not sep:
        raise SelfspecError(
            "the target's chat template drops the user message: data.source=self cannot use it"
        )
    return head, tail


def clean(text: str) -> tuple[str, int]:
    """Drop control, unassigned and replacement characters; collapse runs of spaces. Return (text, dropped)."""
    kept, dropped = [], 0
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t" or (cat[0] != "C" and ch != "\ufffd"):
            kept.append(ch)
        else:
            dropped += 1
    out = re.sub(r"[ \t]+", " ", "".join(kept))
    return re.sub(r"\n{3,}", "\n\n", out).strip(), dropped


def _key(text: str) -> str:
    return " ".join(text.lower().split())


class NearDuplicates:
    """Near-duplicate test by word 3-gram Jaccard similarity, indexed by shingle so each test stays cheap.

    A prompt whose 3-gram set overlaps a kept prompt's by ``threshold`` or more (Jaccard) is a near
    duplicate; prompts of under three words compare by their normalised text only.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.sets: list[frozenset[tuple[str, ...]]] = []
        self.index: dict[tuple[str, ...], list[int]] = {}

    @staticmethod
    def shingles(text: str) -> frozenset[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return frozenset(zip(words, words[1:], words[2:], strict=False)) or frozenset({tuple(words)})

    def seen(self, text: str) -> bool:
        if self.threshold > 1:
            return False
        s = self.shingles(text)
        candidates = {i for g in s for i in self.index.get(g, ())}
        return any(len(s & self.sets[i]) / len(s | self.sets[i]) >= self.threshold for i in candidates)

    def add(self, text: str) -> None:
        s = self.shingles(text)
        for g in s:
            self.index.setdefault(g, []).append(len(self.sets))
        self.sets.append(s)


def self_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_prompts: int,
    cfg: MagpieConf,
    engine: Any,
    avoid: Sequence[str] = (),
) -> tuple[list[str], Counter]:
    """Sample user messages from the target until ``num_prompts`` pass the filters (seed the RNG first).

    Candidates are drawn in rounds through ``engine`` (continuous batching), spread evenly over the steering
    system messages ``cfg.system_prompts`` (an empty string stands for the template's default). Returns the
    prompts and the rejection counts; a near duplicate of an ``avoid`` text (an earlier dataset's prompts) is
    rejected too. At most ``max_attempts_factor * num_prompts`` candidates are drawn, fewer when the acceptance
    rate so far cannot reach ``num_prompts`` within that budget; a shortfall is filled from rejected-but-usable
    candidates when ``relax_on_shortfall`` is set (a random test model writes junk bytes), otherwise it is an
    error.
    """
    prefixes = []
    stops = set(stop_token_ids(model, tokenizer))
    for system in list(cfg.system_prompts) or [""]:
        head, tail = user_prefix(tokenizer, system or None)
        prefixes.append(tokenizer(head, add_special_tokens=False)["input_ids"])
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        if tail_ids and tail_ids[0] in tokenizer.all_special_ids:
            stops.add(tail_ids[0])  # the template's own end of the user turn
    near = NearDuplicates(cfg.near_duplicate_jaccard)
    for text in avoid:
        near.add(text)
    return _draw(tokenizer, prefixes, sorted(stops), num_prompts, cfg, engine, near)


def _draw(tokenizer, prefixes, stops, num_prompts, cfg, engine, near) -> tuple[list[str], Counter]:
    kept: list[str] = []
    spare: list[str] = []  # unfinished or unprintable but non-empty, cleaned: used only on a shortfall
    rejected: Counter = Counter()
    budget = max(1, cfg.max_attempts_factor) * num_prompts
    drawn = 0
    while len(kept) < num_prompts and drawn < budget:
        rate = (len(kept) + 1) / (drawn + 1)  # acceptance so far: ask for enough to finish in one round
        n = min(budget - drawn, max(len(prefixes), round((num_prompts - len(kept)) / max(rate, 0.2))))
        batch = [prefixes[(drawn + i) % len(prefixes)] for i in range(n)]
        drawn += n
        for new, stopped in engine.generate(
            batch, cfg.max_tokens, cfg.temperature, cfg.top_p, stop_ids=stops
        ):
            text, dropped = clean(tokenizer.decode(new, skip_special_tokens=True))
            reason = _reject(text, dropped, stopped, cfg, near)
            if reason is None:
                kept.append(text)
                near.add(text)
            else:
                rejected[reason] += 1
                if text and reason != "near duplicate":
                    spare.append(text[: cfg.max_chars])
        logger.info("self prompts: %d/%d kept after %d candidates", len(kept), num_prompts, drawn)
        hopeless = (len(kept) + 0.5) / drawn * budget < num_prompts  # this rate cannot fill the budget
        if hopeless and (not cfg.relax_on_shortfall or len(spare) >= num_prompts - len(kept)):
            break
    if len(kept) < num_prompts:
        kept = _fill(kept, spare, num_prompts, cfg, rejected, drawn)
    return kept[:num_prompts], rejected


def _reject(text: str, dropped: int, stopped: bool, cfg: MagpieConf, near: NearDuplicates) -> str | None:
    if not text:
        return "empty"
    if not stopped:
        return "unfinished"
    if dropped:
        return "unprintable"
    if len(text) < cfg.min_chars:
        return "too short"
    if len(text) > cfg.max_chars:
        return "too long"
    if near.seen(text):
        return "near duplicate"
    return None


def _fill(
    kept: list[str], spare: list[str], num_prompts: int, cfg: MagpieConf, rejected: Counter, drawn: int
) -> list[str]:
    why = ", ".join(f"{n} {r}" for r, n in rejected.most_common())
    seen = {_key(t) for t in kept}
    extra = []
    for text in spare:
        if _key(text) not in seen:
            seen.add(_key(text))
            extra.append(text)
    short = num_prompts - len(kept)
    if not cfg.relax_on_shortfall or len(extra) < short:
        raise SelfspecError(
            f"the target wrote only {len(kept)} usable prompts of {num_prompts} in {drawn} attempts ({why}); "
            "raise data.magpie.max_attempts_factor, loosen data.magpie.min_chars/max_chars, or use a file source"
        )
    logger.warning(
        "only %d of %d self prompts passed the filters (%s); relaxing: %d unfiltered prompts added",
        len(kept),
        num_prompts,
        why,
        short,
    )
    return kept + extra[:short]
