"""Metric sinks: wandb (``logger=wandb``, offline unless WANDB_MODE says otherwise) or the console only.

wandb must never hang a job: it runs offline by default, gets a bounded ``init_timeout``, and when it cannot
start at all the run goes on with console logging and a warning. Only rank 0 logs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Tracker:
    """Console-only sink; ``WandbTracker`` adds wandb."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Evaluations on the console (a learning curve in the run's log), everything else at debug level."""
        for prefix in ("eval_untrained/", "eval/"):  # the untrained drafter's line first, at the last step
            evals = {k: v for k, v in metrics.items() if k.startswith(prefix)}
            if evals:
                top1 = " ".join(f"{v:.3f}" for k, v in sorted(evals.items()) if "/top1_" in k)
                loss = evals.get(prefix + "loss", float("nan"))
                logger.info("step %d %s loss %.4f, top-1 by position %s", step, prefix[:-1], loss, top1)
        logger.debug("step %d: %s", step, metrics)

    def summary(self, metrics: dict[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, metrics: dict[str, float], step: int) -> None:
        super().log(metrics, step)
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)

    def finish(self) -> None:
        self.run.finish()


def wandb_project(cfg: Any) -> str:
    """``logger.project`` when set on the command line, else ``$WANDB_PROJECT`` (the README's advice), else
    ``selfspec``: passing ``project=`` always, as before, silently overrode the environment variable."""
    return str(cfg.get("project") or os.environ.get("WANDB_PROJECT") or "selfspec")


def make_tracker(cfg: Any, config: dict[str, Any], output_dir: Path, rank: int) -> Tracker:
    """The sink ``cfg`` (the ``logger`` group) asks for; a plain console Tracker off rank 0."""
    kind = str(cfg.type)
    if kind not in ("none", "wandb"):
        from selfspec.utils import SelfspecError

        raise SelfspecError(f"logger.type={kind!r}: use none or wandb")
    if kind == "none" or rank != 0:
        return Tracker()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        run = wandb.init(
            project=wandb_project(cfg),
            name=cfg.run_name or output_dir.name,
            dir=str(output_dir),
            config=config,
            settings=wandb.Settings(init_timeout=float(cfg.init_timeout), console="off"),
        )
    except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
        logger.warning("wandb could not start (%s); logging to the console only", str(e).splitlines()[0])
        return Tracker()
    logger.info("wandb run %s (mode %s) in %s", run.name, os.environ["WANDB_MODE"], output_dir / "wandb")
    return WandbTracker(run)
