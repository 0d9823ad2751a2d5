"""Helpers for the data tests: compose the ``generate`` job config, write chat files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def compose(overrides: list[str]):
    """The composed Hydra config of ``python data/generate.py <overrides>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from selfspec.data.config import register_data

    register_data()
    with initialize_config_module("selfspec.conf", version_base=None):
        return hydra_compose("generate", overrides=overrides)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    """Twelve single-turn prompts in the three supported formats."""
    records = []
    for i in range(12):
        text = f"Question number {i}: what is {i} plus {i}?"
        if i % 3 == 0:
            records.append({"prompt": text})
        elif i % 3 == 1:
            records.append({"messages": [{"role": "user", "content": text}]})
        else:
            records.append(
                {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "x"}]}
            )
    return write_jsonl(tmp_path / "chats.jsonl", records)
