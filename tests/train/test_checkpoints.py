"""Which checkpoint a run resumes from: the newest complete one, whatever DeepSpeed's ``latest`` says."""

from __future__ import annotations

import json

from selfspec.train import checkpoints


def _step(ckpt_dir, step: int, meta: str | None) -> None:
    path = ckpt_dir / f"step_{step:07d}"
    path.mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_bytes(b"deepspeed's files")
    if meta is not None:
        (path / checkpoints.META).write_text(meta)


def test_latest_tag_is_the_newest_complete_checkpoint(tmp_path):
    ok = lambda s: json.dumps({"drafter_type": "medusa", "head": {}, "step": s})  # noqa: E731
    _step(tmp_path, 2, ok(2))
    _step(tmp_path, 3, '{"drafter_type": "med')  # garbled (a writer from before atomic writes)
    _step(tmp_path, 4, None)  # killed between DeepSpeed's files and selfspec.json
    _step(tmp_path, 5, ok(4))  # a marker copied from another step
    (tmp_path / "latest").write_text("step_0000004")  # DeepSpeed moved on to the incomplete one
    assert checkpoints.latest_tag(tmp_path) == "step_0000002"
    (tmp_path / "latest").write_text("")  # an empty latest (killed while DeepSpeed wrote it) changes nothing
    assert checkpoints.latest_tag(tmp_path) == "step_0000002"
    _step(tmp_path, 10_000_000, ok(10_000_000))  # 8 digits sort after 7 by number, not by name
    _step(tmp_path, 9_999_999, ok(9_999_999))
    assert checkpoints.latest_tag(tmp_path) == "step_10000000"


def test_no_checkpoint_is_none(tmp_path):
    assert checkpoints.latest_tag(tmp_path / "missing") is None
    _step(tmp_path, 1, None)
    (tmp_path / "latest").write_text("")
    assert checkpoints.latest_tag(tmp_path) is None


def test_prune_keeps_the_newest_complete_and_drops_incomplete(tmp_path):
    ok = lambda s: json.dumps({"drafter_type": "medusa", "head": {}, "step": s})  # noqa: E731
    for s in (1, 2, 4):
        _step(tmp_path, s, ok(s))
    _step(tmp_path, 3, None)
    checkpoints._prune(tmp_path, keep_last=2, keep="step_0000004")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000004"]
    assert checkpoints.clear(tmp_path) == 2 and list(tmp_path.iterdir()) == []
