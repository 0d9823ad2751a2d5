"""Prompt sources: conversations read from jsonl/parquet files or a hub dataset, in the common chat formats.

Every record becomes a conversation ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``. Assistant
contents from the source are only placeholders: the target regenerates every assistant turn and only user
(and system) turns are kept. Records that cannot be used are counted by reason, never silently dropped; a
source that yields no usable conversation is an error.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)

Message = dict[str, str]
Conversation = list[Message]

_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "prompter": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "bot": "assistant",
}
FORMATS = "ShareGPT conversations[{from,value}], OpenAI messages[{role,content}] or plain prompt"


class SkipRecord(ValueError):
    """A record that cannot be used; its message is the reason it is counted under."""


def _turns(record: dict[str, Any]) -> tuple[list[Any], str, str]:
    if isinstance(record.get("conversations"), list):
        return record["conversations"], "from", "value"
    if isinstance(record.get("messages"), list):
        return record["messages"], "role", "content"
    raise SkipRecord("unknown format")


def normalize(record: Any) -> Conversation:
    """One source record -> a conversation of system?, user, assistant, user, ... (ends with a user turn)."""
    if not isinstance(record, dict):
        raise SkipRecord("not a JSON object")
    if "prompt" in record and "conversations" not in record and "messages" not in record:
        text = record["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise SkipRecord("empty prompt")
        return [{"role": "user", "content": text.strip()}]
    raw, role_key, text_key = _turns(record)
    conv: Conversation = []
    for turn in raw:
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise SkipRecord("malformed turn")
        role = _ROLES.get(str(turn[role_key]).lower())
        if role is None:
            raise SkipRecord("unsupported role")
        content = turn[text_key]
        if role != "assistant" and (not isinstance(content, str) or not content.strip()):
            raise SkipRecord("empty turn")
        if role == "system":
            if conv:
                raise SkipRecord("system turn not first")
            conv.append({"role": "system", "content": content.strip()})
            continue
        expected = "user" if not conv or conv[-1]["role"] != "user" else "assistant"
        if role != expected:
            raise SkipRecord("turns do not alternate")
        conv.append({"role": role, "content": content.strip() if role == "user" else ""})
    while conv and conv[-1]["role"] == "assistant":  # the target answers; a final source answer is dropped
        conv.pop()
    if not any(m["role"] == "user" for m in conv):
        raise SkipRecord("no user turn")
    return conv


def _jsonl_records(path: Path) -> Iterator[Any]:
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield SkipRecord("not valid JSON")


def _parquet_records(path: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise SelfspecError(f"cannot read parquet file {path} ({e}); check the file") from e
    yield from table.to_pylist()


def _hub_records(dataset_id: str, split: str) -> Iterator[Any]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # datasets raises many types (network, missing split, bad id): all are user errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SelfspecError(
            f"cannot load hub dataset {dataset_id!r} split {split!r} ({first}); check the id, the split "
            "(data.hub_split) and the network, or download it and use data.source=jsonl/parquet"
        ) from e
    yield from ds


def source_records(source: str, path: str | None, hub_split: str = "train") -> Iterator[Any]:
    """Raw records of a file or hub source (``SkipRecord`` instances stand for unreadable lines)."""
    if source == "hub":
        if not path:
            raise SelfspecError("data.source=hub needs data.path=<dataset id>")
        return _hub_records(path, hub_split)
    if source not in ("jsonl", "parquet"):
        raise SelfspecError(f"unknown data.source {source!r}: use self, jsonl, parquet or hub")
    if not path:
        raise SelfspecError(f"data.source={source} needs data.path=<file>")
    file = Path(path).expanduser()
    if not file.is_file():
        raise SelfspecError(f"data.path {path!r} is not a file")
    return _jsonl_records(file) if source == "jsonl" else _parquet_records(file)


def collect(records: Iterable[Any], limit: int, fits: Any = None) -> tuple[list[Conversation], Counter]:
    """Normalise records until ``limit`` conversations are usable (``limit <= 0``: all); count the skips.

    ``fits(conv) -> bool`` rejects conversations whose first prompt does not fit the target's context.
    """
    convs: list[Conversation] = []
    skipped: Counter = Counter()
    for record in records:
        if 0 < limit <= len(convs):
            break
        try:
            if isinstance(record, SkipRecord):
                raise record
            conv = normalize(record)
            if fits is not None and not fits(conv):
                raise SkipRecord("prompt longer than the context")
        except SkipRecord as e:
            skipped[str(e)] += 1
            continue
        convs.append(conv)
    if not convs:
        why = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "the source is empty"
        raise SelfspecError(f"no usable conversation in the source ({why}); expected {FORMATS}")
    if skipped:
        logger.warning("skipped %d source records: %s", sum(skipped.values()), dict(skipped))
    return convs, skipped
