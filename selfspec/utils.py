"""Small helpers shared by every stage: device and dtype resolution, atomic writes, seeding, logging."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import random
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from selfspec.faults import maybe_die


class SelfspecError(RuntimeError):
    """An error a user can fix; its message is one line saying what was wrong and what to do."""


@contextlib.contextmanager
def exit_on_user_error(logger: logging.Logger) -> Iterator[None]:
    """At a command-line entry: a ``SelfspecError`` becomes its one-line message and exit code 1, no traceback."""
    try:
        yield
    except SelfspecError as e:
        logger.error("%s", e)
        sys.exit(1)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when it is available, else the CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise SelfspecError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (x86 AVX512-BF16 or AMX-BF16, Arm BF16).

    Asked of torch's own CPU feature probe where it has one, else read from /proc/cpuinfo; never guessed from
    the vendor. On such CPUs a bf16 forward streams half the bytes of fp32 and runs about 1.5x faster.
    """
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        found = caps()
        if found.get("avx512_bf16") or found.get("amx_bf16"):
            return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it and on a CPU with native bf16 arithmetic, else fp32.

    fp32 is the exact mode (a bf16 forward over a block of tokens rounds differently from one token at a time,
    so speculative decoding in bf16 can differ from ``generate`` at near-ties). Asking for bf16 on a CPU
    without native bf16 works but is slow: one warning says so.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    device = torch.device(device)
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise SelfspecError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    if _DTYPES[dtype] == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_once("this CPU has no native bf16 arithmetic: bf16 runs emulated and slow; use dtype=fp32")
    return _DTYPES[dtype]


@functools.cache
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning("%s", message)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bf16`` (the names the configs use)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; on success it becomes ``dest``, complete or not at all.

    The folder is written under a temporary name and fsynced (files, then folders). A new ``dest`` then appears
    in one rename. Replacing an existing ``dest`` takes two renames, because rename(2) cannot swap a folder
    for a non-empty one: ``dest`` -> ``.<name>.old-<unique>``, the new folder -> ``dest``, then the old copy is
    deleted. A kill between the two renames leaves no ``dest`` and one complete ``.old-`` copy; the next
    ``atomic_dir(dest)`` of any process starts with ``recover_dir``, which renames that copy back (or deletes
    it when ``dest`` exists). So ``dest`` is never half written; a reader racing a replacement may find it
    missing for that one moment. On any error the temporary folder is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    tmp = Path(
        tempfile.mkdtemp(prefix=f"{_tmp_prefix(dest)}{os.getpid()}@{socket.gethostname()}-", dir=dest.parent)
    )
    try:
        yield tmp
        fsync_tree(tmp)
        _publish_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(dest.parent, directory=True)


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-"


def _old_prefix(dest: Path) -> str:
    return f".{dest.name}.old-"


def _publish_dir(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``, moving an existing ``dest`` aside first (see ``atomic_dir``).

    Another writer (or a recovery) may put a ``dest`` back between the renames; then rename(2) fails with
    EEXIST/ENOTEMPTY and the swap is simply done again.
    """
    for _ in range(8):
        old = None
        if os.path.lexists(dest):
            old = dest.with_name(f"{_old_prefix(dest)}{uuid.uuid4().hex[:12]}")
            with contextlib.suppress(FileNotFoundError):  # another writer moved it away meanwhile
                os.rename(dest, old)
            maybe_die("atomic_dir_swap")
        try:
            os.rename(tmp, dest)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                if old is not None and old.exists() and not os.path.lexists(dest):
                    os.rename(old, dest)
                raise
            if old is not None:  # a complete dest is back in place: our moved-aside copy is stale
                shutil.rmtree(old, ignore_errors=True)
            continue
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    raise OSError(f"could not replace {dest}: other processes keep replacing it at the same time")


def recover_dir(dest: str | Path) -> None:
    """Clean up after writers of ``dest`` that were killed: restore ``dest`` from a ``.old-`` copy left between
    ``atomic_dir``'s two renames (the newest, if several), delete other ``.old-`` copies, and delete the
    temporary folders of dead writers on this host (a live writer's, or another host's, are left alone)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    olds, tmps = [], []
    for entry in os.scandir(dest.parent):
        if entry.name.startswith(_old_prefix(dest)):
            with contextlib.suppress(OSError):
                olds.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path)))
        elif entry.name.startswith(_tmp_prefix(dest)):
            tmps.append(Path(entry.path))
    for _, old in sorted(olds, reverse=True):
        if not os.path.lexists(dest):
            try:
                os.rename(old, dest)
                continue
            except OSError:
                if not os.path.lexists(dest):
                    continue  # could not restore it now: keep it for the next try
        shutil.rmtree(old, ignore_errors=True)  # dest is complete: this copy is stale
    for tmp in tmps:
        if _writer_is_dead(tmp.name[len(_tmp_prefix(dest)) :]):
            shutil.rmtree(tmp, ignore_errors=True)


def _writer_is_dead(tag: str) -> bool:
    """``tag`` is ``<pid>@<host>-<random>`` (see ``atomic_dir``): is that pid gone, on this very host?"""
    pid, _, rest = tag.partition("@")
    if not pid.isdigit() or rest.rsplit("-", 1)[0] != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _fsync(path: str | Path, directory: bool = False) -> None:
    """fsync one file or folder; a folder that cannot be fsynced (some network filesystems) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under ``root``, then every folder: a rename that publishes ``root`` afterwards
    survives a power loss with the contents, not only the name."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                _fsync(path)
        _fsync(dirpath, directory=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and a rename (then fsync the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches are shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync(path.parent, directory=True)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Log INFO on rank 0 only; other ranks log warnings and errors.

    Under Hydra the root logger already has handlers (console + the run's log file), so only its level is set.
    """
    root = logging.getLogger()
    effective = level if is_rank_zero() else logging.WARNING
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    root.setLevel(effective)
