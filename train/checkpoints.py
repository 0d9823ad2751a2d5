"""Full training-state checkpoints under ``output_dir/checkpoints``: save, keep the last N, resume.

``checkpoints/step_NNNNNNN/`` holds DeepSpeed's files (drafter, optimizer with its ZeRO shards per rank,
scheduler; the ``TrainState`` and RNG states travel as DeepSpeed client state), ``config.yaml`` (the resolved
training config) and ``selfspec.json`` (drafter type, head config, step). ``selfspec.json`` is the commit
marker: it is written last, atomically, after every rank's DeepSpeed files are on disk, and a checkpoint
without it is incomplete. Resumption takes the newest complete checkpoint (``latest_tag``), so a kill at any
moment of a save (between DeepSpeed's files, or between them and selfspec's) resumes from the previous one.
DeepSpeed's own ``latest`` file is still written (its tools read it) but never trusted here: DeepSpeed writes
it in place, so a kill can leave it empty or pointing at an incomplete folder.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from selfspec.faults import maybe_die
from selfspec.train.parallel import all_reduce_sum, barrier
from selfspec.utils import SelfspecError, atomic_write_json, atomic_write_text, fsync_tree, is_rank_zero

logger = logging.getLogger(__name__)

META = "selfspec.json"


@dataclass
class TrainState:
    """Where training is: optimiser steps done and micro batches consumed (the data position)."""

    step: int = 0
    micro_step: int = 0
    tokens: int = 0  # loss-mask tokens seen on this rank


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def _steps(ckpt_dir: Path) -> list[Path]:
    """``step_*`` folders, oldest first (by step number, not by name)."""
    found = [p for p in ckpt_dir.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def is_complete(path: Path) -> bool:
    """Whether a ``step_*`` folder was fully saved: its ``selfspec.json`` exists, parses and names its step."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("step") == int(path.name[5:])


def latest_tag(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint's tag (``step_NNNNNNN``), or None when there is none."""
    return next((p.name for p in reversed(_steps(ckpt_dir)) if is_complete(p)), None)


def clear(ckpt_dir: Path) -> int:
    """Delete every checkpoint in ``ckpt_dir`` (``train.resume=never``); return how many there were."""
    steps = _steps(ckpt_dir)
    for path in steps:
        _delete(path)
    (ckpt_dir / "latest").unlink(missing_ok=True)
    return len(steps)


def _delete(path: Path) -> None:
    """The marker goes first: a kill during the deletion never leaves a half-deleted folder that looks complete."""
    (path / META).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def check_compatible(ckpt_dir: Path, tag: str, drafter_type: str, head: dict[str, Any]) -> None:
    """A checkpoint of another drafter type, or of other head hyper-parameters, is a clear error."""
    meta_file = ckpt_dir / tag / META
    if not meta_file.is_file():
        raise SelfspecError(
            f"{ckpt_dir / tag} is not a selfspec checkpoint (no {META}): use another output_dir"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("drafter_type") != drafter_type:
        raise SelfspecError(
            f"{ckpt_dir} holds a {meta.get('drafter_type')!r} drafter checkpoint but this run trains "
            f"{drafter_type!r}: use another output_dir or train.resume=never"
        )
    if meta.get("head") != head:
        diff = sorted(k for k in set(head) | set(meta.get("head", {})) if head.get(k) != meta["head"].get(k))
        raise SelfspecError(
            f"{ckpt_dir / tag} was trained with other head settings ({', '.join(diff)}): "
            "use another output_dir or train.resume=never"
        )


def save(
    engine: Any,
    ckpt_dir: Path,
    state: TrainState,
    drafter_type: str,
    head: dict[str, Any],
    resolved_yaml: str,
    keep_last: int,
) -> Path:
    """Save the full training state (collective: every rank calls it), commit it, prune to ``keep_last``.

    Order: DeepSpeed's files on every rank, fsynced; a barrier; then rank 0 writes ``config.yaml``, the
    ``selfspec.json`` marker, DeepSpeed's ``latest``, and prunes. The checkpoint counts only from the marker on.
    """
    _check_weights_finite(engine, state.step)
    tag = f"step_{state.step:07d}"
    path = ckpt_dir / tag
    if is_rank_zero():  # a tag saved again (after an earlier resume) is incomplete until the end
        (path / META).unlink(missing_ok=True)
    client = {"train_state": asdict(state), "rng": _rng_state(), "drafter_type": drafter_type}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, save_latest=False)
    fsync_tree(path)
    barrier()
    maybe_die("ckpt_between_files")
    if is_rank_zero():
        atomic_write_text(path / "config.yaml", resolved_yaml)
        atomic_write_json(path / META, {"drafter_type": drafter_type, "head": head, "step": state.step})
        # For DeepSpeed's own tools (zero_to_fp32.py); never read here.
        atomic_write_text(ckpt_dir / "latest", tag)
        _prune(ckpt_dir, keep_last, keep=tag)
    barrier()
    logger.info("checkpoint %s saved", path)
    return path


def _check_weights_finite(engine: Any, step: int) -> None:
    """Never checkpoint NaN/inf weights (collective): a later resume would take them for the last good state.

    A ZeRO-3 rank holds its share of a parameter in ``ds_tensor``.
    """
    shares = [getattr(p, "ds_tensor", p).detach() for p in engine.module.parameters()]
    local = torch.stack([torch.isfinite(t).all() for t in shares]).all()
    if bool(all_reduce_sum((~local).float().reshape(1)).item()):
        raise SelfspecError(
            f"refusing to checkpoint step {step}: the drafter's weights are not finite; the last complete "
            "checkpoint stays the one to resume from; lower train.lr or check the data, then rerun"
        )


def _prune(ckpt_dir: Path, keep_last: int, keep: str) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (and ``keep``); delete older ones and incomplete ones."""
    complete = [p.name for p in _steps(ckpt_dir) if is_complete(p)]
    kept = set(complete[-max(1, keep_last) :]) | {keep}
    for path in _steps(ckpt_dir):
        if path.name not in kept:
            _delete(path)


def load(engine: Any, ckpt_dir: Path, tag: str) -> TrainState:
    """Restore drafter, optimizer, scheduler, RNG states; return the TrainState to continue from."""
    path, client = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None or client is None or "train_state" not in client:
        raise SelfspecError(
            f"could not load the checkpoint {ckpt_dir / tag}: delete it or use train.resume=never"
        )
    _set_rng_state(client["rng"])
    return TrainState(**client["train_state"])
