"""Held-out prompts for the benchmark: the eval split the data step kept aside, or a JSONL file of chat prompts.

Every loader returns plain token-id lists (one per prompt, chat template applied, generation prompt added), so
each method of the benchmark sees exactly the same input. decode/ may not import selfspec.data: the eval split is
read through ``datasets`` directly, by its documented columns (``input_ids``, ``prompt_len``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)


def prompts_from_split(split: Any, num_prompts: int | None = None) -> list[list[int]]:
    """Prompts of a data-step split: ``input_ids[:prompt_len]`` of each row (the target's answer cut off)."""
    missing = {"input_ids", "prompt_len"} - set(getattr(split, "column_names", []))
    if missing:
        raise SelfspecError(
            f"the eval split lacks the columns {sorted(missing)}: give a dataset written by data/"
        )
    n = len(split) if num_prompts is None else min(num_prompts, len(split))
    if num_prompts is not None and n < num_prompts:
        logger.warning(
            "the eval split holds %d prompts, fewer than num_prompts=%d: benching %d (hold out more with "
            "data.eval_fraction, or pass prompts=FILE)",
            n,
            num_prompts,
            n,
        )
    rows = split.select(range(n))
    return [list(ids[:plen]) for ids, plen in zip(rows["input_ids"], rows["prompt_len"], strict=True)]


def prompts_from_dataset_dir(path: str | Path, num_prompts: int | None = None) -> list[list[int]]:
    """The ``eval`` split of a data-step DatasetDict folder (``load_from_disk``)."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.exists():
        raise SelfspecError(
            f"dataset folder {str(path)!r} does not exist: run data/generate.py or pass prompts=FILE"
        )
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise SelfspecError(
            f"{str(path)!r} is not a datasets folder ({e}); pass the data step's output"
        ) from e
    if isinstance(ds, DatasetDict):
        if "eval" not in ds:
            raise SelfspecError(
                f"dataset {str(path)!r} has no 'eval' split (it has {sorted(ds)}); pass prompts=FILE"
            )
        ds = ds["eval"]
    if len(ds) == 0:
        raise SelfspecError(
            f"the eval split of {str(path)!r} is empty: raise data.eval_fraction or pass prompts=FILE"
        )
    return prompts_from_split(ds, num_prompts)


def _messages_of(record: Any, where: str) -> list[dict[str, str]]:
    """One JSONL record as chat messages; ``{"prompt": str}`` becomes one user message."""
    if not isinstance(record, dict):
        raise SelfspecError(f'{where}: expected an object {{"messages": [...]}} or {{"prompt": "..."}}')
    if "messages" in record:
        msgs = record["messages"]
        ok = (
            isinstance(msgs, list)
            and msgs
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs
            )
        )
        if not ok:
            raise SelfspecError(
                f'{where}: "messages" must be a non-empty list of {{"role": str, "content": str}}'
            )
        # Drop a trailing assistant turn: the benchmark asks the target to write it.
        return msgs[:-1] if msgs[-1]["role"] == "assistant" and len(msgs) > 1 else msgs
    if "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise SelfspecError(f'{where}: "prompt" must be a non-empty string')
        return [{"role": "user", "content": record["prompt"]}]
    raise SelfspecError(f'{where}: no "messages" or "prompt" key (keys: {sorted(record)})')


# Prompt sets shipped with selfspec, by name (``prompts=other_kinds``): never used for training.
BUILTIN = {
    # 48 prompts written for selfspec, round-robin over code (16), math (16) and two-turn conversations (16):
    # kinds of prompt unlike the target's self-written training prompts.
    "other_kinds": Path(__file__).parent / "prompts_data" / "other_kinds.jsonl",
}


def read_prompts_file(path: str | Path) -> list[list[dict[str, str]]]:
    """Parse a JSONL file of ``{"messages": [...]}`` or ``{"prompt": "..."}`` lines (blank lines skipped), or a
    built-in prompt set by name (``BUILTIN``)."""
    path = BUILTIN.get(str(path), Path(path))
    if not path.is_file():
        raise SelfspecError(f"prompts file {str(path)!r} does not exist: give a JSONL file of chat prompts")
    conversations = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SelfspecError(f"{where}: not valid JSON ({e.msg}); one JSON object per line") from e
            conversations.append(_messages_of(record, where))
    if not conversations:
        raise SelfspecError(f"prompts file {str(path)!r} has no prompts: one JSON object per line")
    return conversations


def encode_conversations(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[list[dict[str, str]]]
) -> list[list[int]]:
    """Token ids of each conversation through the tokenizer's chat template, with the generation prompt."""
    if not tokenizer.chat_template:
        raise SelfspecError("the target's tokenizer has no chat template: pass prompts as token ids instead")
    out = []
    for msgs in conversations:
        enc = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
        out.append(list(enc["input_ids"]))
    return out


def load_prompts_file(
    path: str | Path, tokenizer: PreTrainedTokenizerBase, num_prompts: int | None = None
) -> list[list[int]]:
    conversations = read_prompts_file(path)
    if num_prompts is not None:
        conversations = conversations[:num_prompts]
    return encode_conversations(tokenizer, conversations)
