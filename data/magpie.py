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

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selfspec.data.config import MagpieConf
from selfspec.data.rollout import Sampling, generate_batch, stop_token_ids
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

_SENTINEL = "@@SELFSPEC_USER@@"


def user_prefix(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """The template text before a user message (system turn included) and the text right after it."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False)
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


def self_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_prompts: int,
    cfg: MagpieConf,
    batch_size: int,
) -> tuple[list[str], Counter]:
    """Sample user messages from the target until ``num_prompts`` pass the filters (seed the RNG first).

    Returns the prompts and the rejection counts. At most ``max_attempts_factor * num_prompts`` candidates
    are drawn, fewer when the acceptance rate so far cannot reach ``num_prompts`` within that budget; a shortfall is filled from rejected-but-usable candidates when ``relax_on_shortfall`` is set
    (a random test model writes junk bytes), otherwise it is an error.
    """
    head, tail = user_prefix(tokenizer)
    prefix = tokenizer(head, add_special_tokens=False)["input_ids"]
    stops = set(stop_token_ids(model, tokenizer))
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if tail_ids and tail_ids[0] in tokenizer.all_special_ids:
        stops.add(tail_ids[0])  # the template's own end of the user turn
    sampling = Sampling(max_new_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    kept: list[str] = []
    spare: list[str] = []  # unfinished or unprintable but non-empty, cleaned: used only on a shortfall
    seen: set[str] = set()
    rejected: Counter = Counter()
    budget = max(1, cfg.max_attempts_factor) * num_prompts
    drawn = 0
    while len(kept) < num_prompts and drawn < budget:
        n = min(batch_size, budget - drawn)
        drawn += n
        for new, stopped in generate_batch(model, tokenizer, [prefix] * n, sampling, sorted(stops)):
            text, dropped = clean(tokenizer.decode(new, skip_special_tokens=True))
            reason = _reject(text, dropped, stopped, cfg, seen)
            if reason is None:
                kept.append(text)
                seen.add(_key(text))
            else:
                rejected[reason] += 1
                if text and _key(text) not in seen and reason != "duplicate":
                    spare.append(text[: cfg.max_chars])
        logger.info("self prompts: %d/%d kept after %d candidates", len(kept), num_prompts, drawn)
        hopeless = (len(kept) + 0.5) / drawn * budget < num_prompts  # this rate cannot fill the budget
        if hopeless and (not cfg.relax_on_shortfall or len(spare) >= num_prompts - len(kept)):
            break
    if len(kept) < num_prompts:
        kept = _fill(kept, spare, num_prompts, cfg, rejected, drawn)
    return kept[:num_prompts], rejected


def _reject(text: str, dropped: int, stopped: bool, cfg: MagpieConf, seen: set[str]) -> str | None:
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
    if _key(text) in seen:
        return "duplicate"
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
