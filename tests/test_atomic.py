"""``atomic_dir``: a folder is replaced complete or not at all, including after a kill between its two renames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from selfspec.utils import atomic_dir, recover_dir

REPO = Path(__file__).resolve().parents[1]


def _write(dest: Path, text: str) -> None:
    with atomic_dir(dest) as tmp:
        (tmp / "part").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "part").write_text(text)


def _content(dest: Path) -> str:
    assert (dest / "sub" / "part").read_text() == (dest / "part").read_text()
    return (dest / "part").read_text()


def test_replace_is_complete_and_leaves_nothing_beside(tmp_path):
    dest = tmp_path / "out"
    _write(dest, "v1")
    _write(dest, "v2")
    assert _content(dest) == "v2" and sorted(os.listdir(tmp_path)) == ["out"]


def test_failed_replace_keeps_the_old_folder(tmp_path):
    dest = tmp_path / "out"
    _write(dest, "v1")
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "part").write_text("half")
        raise RuntimeError("boom")
    assert _content(dest) == "v1" and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.faults
@pytest.mark.timeout(180)
def test_kill_between_the_two_renames_is_recovered(tmp_path):
    """SIGKILL after ``dest`` was moved aside and before the new folder took its place: the next use of
    ``atomic_dir`` (here one that fails, so only the recovery acts) brings the previous version back."""
    dest = tmp_path / "out"
    _write(dest, "v1")
    code = f"from tests.test_atomic import _write; _write({str(dest)!r}, 'v2')"
    env = {**os.environ, "SELFSPEC_FAULT": "atomic_dir_swap"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = sorted(os.listdir(tmp_path))
    assert "out" not in left and [n for n in left if n.startswith(".out.old-")], left
    with pytest.raises(RuntimeError), atomic_dir(dest):
        raise RuntimeError("a later writer fails too")
    assert _content(dest) == "v1" and sorted(os.listdir(tmp_path)) == ["out"]  # the dead writer's tmp too
    _write(dest, "v3")
    assert _content(dest) == "v3" and sorted(os.listdir(tmp_path)) == ["out"]


def test_recovery_drops_stale_copies_but_not_a_live_writers_folder(tmp_path):
    import socket

    dest = tmp_path / "out"
    _write(dest, "v2")
    (tmp_path / ".out.old-0123456789ab").mkdir()  # a leftover beside a complete dest
    live = tmp_path / f".out.tmp-{os.getpid()}@{socket.gethostname()}-abc"
    live.mkdir()
    elsewhere = tmp_path / ".out.tmp-1@another-host-abc"  # another host's writer: cannot tell, keep
    elsewhere.mkdir()
    recover_dir(dest)
    assert sorted(os.listdir(tmp_path)) == sorted(["out", live.name, elsewhere.name])
    assert _content(dest) == "v2"
