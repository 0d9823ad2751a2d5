"""The wandb sink: which project a run lands in."""

from __future__ import annotations

import sys
import types

import pytest
from omegaconf import OmegaConf

from selfspec.train.tracking import WandbTracker, make_tracker


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording ``init``'s arguments."""
    calls: list[dict] = []
    module = types.SimpleNamespace(
        init=lambda **kw: calls.append(kw) or types.SimpleNamespace(name="run"),
        Settings=lambda **kw: kw,
    )
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


@pytest.mark.parametrize(
    ("project", "env", "expected"),
    [(None, "from-env", "from-env"), ("from-cli", "from-env", "from-cli"), (None, None, "selfspec")],
)
def test_wandb_project_honours_the_environment(project, env, expected, fake_wandb, monkeypatch, tmp_path):
    if env is None:
        monkeypatch.delenv("WANDB_PROJECT", raising=False)
    else:
        monkeypatch.setenv("WANDB_PROJECT", env)
    cfg = OmegaConf.create({"type": "wandb", "project": project, "run_name": None, "init_timeout": 1.0})
    tracker = make_tracker(cfg, {}, tmp_path, rank=0)
    assert isinstance(tracker, WandbTracker) and fake_wandb[0]["project"] == expected
