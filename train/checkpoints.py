"""Full training-state checkpoints under ``output_dir/checkpoints``: save, keep the last N, resume.

DeepSpeed's ``save_checkpoint`` writes the drafter, optimizer (ZeRO shards per rank) and scheduler into
``checkpoints/step_NNNNNNN/`` and only then points ``checkpoints/latest`` at it, so a kill mid-save leaves the
previous checkpoint as the one to resume. Beside it selfspec writes ``selfspec.json`` (drafter type, head
config, step) and ``config.yaml`` (the resolved training config); the ``TrainState`` and RNG states travel as
DeepSpeed client state.
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

from selfspec.train.parallel import barrier
from selfspec.utils import SelfspecError, atomic_write_json, atomic_write_text, is_rank_zero

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


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag DeepSpeed last committed (``latest`` file), if that checkpoint folder exists."""
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if (ckpt_dir / tag).is_dir() else None


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
    """Save the full training state (collective: every rank calls it) and prune to the last ``keep_last``."""
    tag = f"step_{state.step:07d}"
    client = {"train_state": asdict(state), "rng": _rng_state(), "drafter_type": drafter_type}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client)
    if is_rank_zero():
        atomic_write_json(
            ckpt_dir / tag / META, {"drafter_type": drafter_type, "head": head, "step": state.step}
        )
        atomic_write_text(ckpt_dir / tag / "config.yaml", resolved_yaml)
        _prune(ckpt_dir, keep_last, keep=tag)
    barrier()
    logger.info("checkpoint %s saved", ckpt_dir / tag)
    return ckpt_dir / tag


def _prune(ckpt_dir: Path, keep_last: int, keep: str) -> None:
    tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for old in tags[: max(0, len(tags) - max(1, keep_last))]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


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
