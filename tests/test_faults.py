"""Fault injection: real SIGKILLs at ``SELFSPEC_FAULT`` points (``selfspec.faults``), then a rerun that must end
where an uninterrupted run ends. ``pytest -m faults`` runs them; they are also part of the default run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.faults


def test_maybe_die_kills_at_the_nth_hit_of_its_point_only():
    code = (
        "from selfspec.faults import maybe_die\n"
        "maybe_die('x'); print('after 1', flush=True)\n"
        "maybe_die('y'); maybe_die('x'); print('after 2', flush=True)\n"
    )
    env = {**os.environ, "SELFSPEC_FAULT": "x:2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == "after 1\n", proc.stderr[-2000:]
    env.pop("SELFSPEC_FAULT")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "after 1\nafter 2\n"
