"""The embedded target writes its own prompts (Magpie) and answers them."""

from __future__ import annotations

import json

import pytest

from selfspec.data import build_dataset, load_splits
from tests.data.conftest import compose


@pytest.mark.integration
def test_self_prompts_on_embedded_target(embedded_target, tmp_path):
    cfg = compose(
        [
            f"data.cache_dir={tmp_path}",
            "data.num_prompts=4",
            "data.max_new_tokens=12",
            "data.batch_size=4",
            "data.magpie.max_tokens=48",
            "data.eval_fraction=0.25",
        ]
    )
    out = build_dataset(cfg, *embedded_target)
    splits = load_splits(out)
    assert len(splits["train"]) == 3 and len(splits["eval"]) == 1
    prompts = [
        c[0]["content"] for c in json.loads((out.parent / "prompts.json").read_text())["conversations"]
    ]
    assert len({p.lower() for p in prompts}) == 4 and all(p.isprintable() or "\n" in p for p in prompts)
    _, tok = embedded_target
    for row in splits["train"]:
        answer = tok.decode(
            [t for t, m in zip(row["input_ids"], row["loss_mask"], strict=True) if m],
            skip_special_tokens=True,
        )
        assert answer.strip() and "\ufffd" not in answer
