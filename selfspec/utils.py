"""Small helpers shared by every stage: device and dtype resolution, atomic writes, seeding, logging."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


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
    """Yield a temporary folder beside ``dest``; on success it is renamed to ``dest`` in one step.

    On any error the temporary folder is removed, so a reader never sees a half-written ``dest``.
    An existing ``dest`` is replaced only after the new one is complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches are shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
