"""The training loop: the frozen target supplies logits and features online, the DeepSpeed engine trains the
drafter on them, with evaluation, checkpoints, resumption and a stop on a non-finite loss.

Every rank runs the same number of forwards (train and eval), which ZeRO-3's collective gathers require.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from selfspec.faults import maybe_die
from selfspec.heads import target_forward
from selfspec.heads.vocab import draft_token_ids
from selfspec.target import output_logits
from selfspec.train import checkpoints
from selfspec.train.acceptance import DEPTH, RANKS, rank_counts, to_probabilities
from selfspec.train.batches import Batches
from selfspec.train.checkpoints import TrainState
from selfspec.train.losses import DrafterObjective, LossOutput
from selfspec.train.parallel import all_reduce_sum, barrier, parallelize
from selfspec.train.tracking import Tracker
from selfspec.utils import SelfspecError, atomic_write_text, cpu_has_native_bf16

logger = logging.getLogger(__name__)


def metric_label(drafter_type: str) -> str:
    """What the k-th entry of a family's per-head metrics is: an EAGLE-3 TTT step, a DFlash block position, a head."""
    return {"eagle3": "step", "dflash": "pos"}.get(drafter_type, "head")


def head_config(drafter: Any) -> dict[str, Any]:
    """The drafter's hyper-parameters as plain JSON values (what a checkpoint must match to be resumed)."""
    return json.loads(json.dumps(asdict(drafter.config), default=str))


def autocast_dtype(choice: str, device: torch.device, drafter: Any) -> bool:
    """Whether the drafter's forward runs under bf16 autocast (its weights and optimizer stay fp32).

    ``auto``: on a CPU with native bf16 while the weights are fp32 (about twice the matmul throughput; on
    GPUs DeepSpeed's bf16 mode already trains in bf16). ``bf16``: always; ``fp32``: never.
    """
    if choice not in ("auto", "bf16", "fp32"):
        raise SelfspecError(f"train.compute_dtype={choice!r}: use auto, bf16 or fp32")
    fp32_weights = next(drafter.parameters()).dtype == torch.float32
    if choice == "auto":
        return device.type == "cpu" and fp32_weights and cpu_has_native_bf16()
    return choice == "bf16" and fp32_weights


class Metrics:
    """Running sums of LossOutput tensors; turned into Python numbers only by ``reduce``."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, out: LossOutput) -> None:
        parts = {
            "loss": out.loss.detach().reshape(1),
            "per_head": out.per_head.detach() * out.count,
            "correct": out.correct.detach(),
            "count": out.count.detach(),
        }
        parts.update({k: v.detach().reshape(1) for k, v in out.extra.items()})
        for k, v in parts.items():
            self.sums[k] = self.sums[k] + v.float() if k in self.sums else v.float().clone()
        self.n += 1

    def reduce(self, prefix: str, label: str) -> dict[str, float]:
        """All-reduce across ranks and return ``{prefix/loss, prefix/top1_<label>1, ...}`` (heads 1-based)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        flat = torch.cat(
            [self.sums[k].reshape(-1) for k in keys]
            + [torch.tensor([float(self.n)], device=self.sums[keys[0]].device)]
        )
        flat = all_reduce_sum(flat).cpu()
        vals, i = {}, 0
        for k in keys:
            vals[k], i = flat[i : i + self.sums[k].numel()], i + self.sums[k].numel()
        n = float(flat[-1])
        count = vals["count"].clamp(min=1)
        out = {f"{prefix}/loss": float(vals["loss"].sum()) / max(1.0, n)}
        for k in sorted(set(keys) - {"loss", "per_head", "correct", "count"}):
            out[f"{prefix}/{k}"] = float(vals[k].sum()) / max(1.0, n)
        for h in range(count.numel()):
            out[f"{prefix}/top1_{label}{h + 1}"] = float(vals["correct"][h] / count[h])
            out[f"{prefix}/loss_{label}{h + 1}"] = float(vals["per_head"][h] / count[h])
        return out


class Trainer:
    """Owns the engine, the data streams and the TrainState; ``fit()`` runs to ``train.max_steps``."""

    def __init__(
        self,
        cfg: Any,
        target: Any,
        drafter: Any,
        splits: Any,
        pad_id: int,
        output_dir: Path,
        rank: int,
        world: int,
        device: torch.device,
        tracker: Tracker | None = None,
        features: Any = None,
    ) -> None:
        """``features``: the dataset's stored target features (offline mode), or None to run the target on
        every batch (online mode)."""
        self.cfg, self.t = cfg, cfg.train
        self.target, self.drafter = target, drafter
        self.device, self.rank = device, rank
        self.output_dir = output_dir
        self.ckpt_dir = output_dir / "checkpoints"
        self.tracker = tracker or Tracker()
        self.label = metric_label(drafter.drafter_type)
        self.layers = list(drafter.feature_layers())
        self.features = features
        if features is not None:  # offline: where each needed layer, and the final state, sit in the store
            self.stored = features.index_of(self.layers)
            self.final = features.index_of([target.config.get_text_config().num_hidden_layers])[0]
        # Offline training steps project only the draft vocabulary's rows of the target's lm_head (6x fewer for
        # an 8k draft vocabulary of a 49k target); evaluation and acceptance statistics keep the full logits.
        ids = draft_token_ids(drafter)
        self.reduced_vocab = ids is not None and ids.numel() < target.config.get_text_config().vocab_size
        self.autocast = autocast_dtype(str(self.t.compute_dtype), device, drafter)
        self.head = head_config(drafter)
        self.engine = parallelize(DrafterObjective(drafter, self.t.loss), cfg, device, world)
        mk = {
            "micro_batch_size": int(self.t.micro_batch_size),
            "max_len": int(self.t.max_seq_len),
            "pad_id": pad_id,
            "rank": rank,
            "world": world,
            "seed": int(cfg.seed),
        }
        self.train_batches = Batches(
            splits["train"],
            shuffle=True,
            features=features,
            group_by_length=bool(self.t.group_by_length),
            **mk,
        )
        self.eval_batches = None
        if len(splits["eval"]):
            self.eval_batches = Batches(
                splits["eval"], shuffle=False, features=features, split_name="eval", **mk
            )
        self.state = TrainState()
        self.history: list[dict[str, float]] = []

    # -- one forward -------------------------------------------------------------------------------------

    def inputs(self, batch: dict[str, torch.Tensor], full_vocab: bool = True) -> tuple[torch.Tensor, ...]:
        """(input_ids, loss_mask, target logits, target features) of a batch, on the device. ``full_vocab``
        False (offline training steps): logits over the drafter's draft vocabulary only (``in_draft_vocab``)."""
        ids = batch["input_ids"].to(self.device)
        mask = batch["loss_mask"].to(self.device)
        with torch.no_grad():
            if self.features is None:
                logits, hidden = target_forward(self.target, ids, layers=self.layers)[:2]
            else:  # stored states; the logits from the final one through the target's own lm_head
                f = batch["features"].to(self.device)  # (B, T, stored layers, H)
                hidden = tuple(f[:, :, i] for i in self.stored)
                rows = draft_token_ids(self.drafter) if self.reduced_vocab and not full_vocab else None
                logits = output_logits(self.target, f[:, :, self.final].to(self.target.dtype), rows)
        return ids, mask, logits, hidden

    def forward(self, batch: dict[str, torch.Tensor], full_vocab: bool = True) -> LossOutput:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return LossOutput(*self.engine(*self.inputs(batch, full_vocab)))

    @torch.no_grad()
    def acceptance_stats(self, max_batches: int = 64) -> dict[str, Any] | None:
        """``p[d][r]`` on the eval split for the tree planner (``train/acceptance.py``), every rank alike."""
        if self.eval_batches is None:
            return None
        self.engine.eval()
        hits = torch.zeros(DEPTH, RANKS + 2, dtype=torch.long)
        reached = torch.zeros(DEPTH, dtype=torch.long)
        for i, batch in enumerate(self.eval_batches.epoch_iter(0)):
            if i >= max_batches:
                break
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                h, r = rank_counts(self.drafter, *self.inputs(batch))
            hits, reached = hits + h, reached + r
        self.engine.train()
        flat = all_reduce_sum(torch.cat([hits.flatten(), reached]).to(self.device)).cpu()
        n = DEPTH * (RANKS + 2)
        return to_probabilities(flat[:n].view(DEPTH, RANKS + 2), flat[n:])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_batches is None:
            return {}
        self.engine.eval()
        metrics, limit = Metrics(), int(self.t.eval_batches) or len(self.eval_batches)
        for i, batch in enumerate(self.eval_batches.epoch_iter(0)):
            if i >= limit:
                break
            metrics.add(self.forward(batch))
        self.engine.train()
        return metrics.reduce("eval", self.label)

    # -- resumption --------------------------------------------------------------------------------------

    def maybe_resume(self) -> None:
        mode = str(self.t.resume)
        if mode not in ("auto", "never"):
            raise SelfspecError(f"train.resume={mode!r}: use auto or never")
        if mode == "never":
            self._start_over()
        tag = checkpoints.latest_tag(self.ckpt_dir) if mode == "auto" else None
        if tag is None:
            return
        checkpoints.check_compatible(self.ckpt_dir, tag, self.drafter.drafter_type, self.head)
        self.state = checkpoints.load(self.engine, self.ckpt_dir, tag)
        logger.info("resumed from %s at step %d", self.ckpt_dir / tag, self.state.step)

    def _start_over(self) -> None:
        """``train.resume=never``: earlier checkpoints in this output_dir are deleted, or a later ``auto`` run
        would resume from the old run's newest one instead of this run's."""
        if self.rank == 0:
            n = checkpoints.clear(self.ckpt_dir)
            if n:
                logger.warning("train.resume=never: deleted %d earlier checkpoint(s) in %s", n, self.ckpt_dir)
        barrier()

    def save(self) -> None:
        checkpoints.save(
            self.engine,
            self.ckpt_dir,
            self.state,
            self.drafter.drafter_type,
            self.head,
            OmegaConf.to_yaml(self.cfg, resolve=True),
            int(self.t.keep_last),
        )

    def _record(self, row: dict[str, float]) -> None:
        """Per-step loss, kept in memory and appended to ``output_dir/train_log.jsonl`` (rank 0)."""
        self.history.append(row)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def _trim_log(self) -> None:
        """Drop ``train_log.jsonl`` rows past the step training starts from (rank 0), so no step appears twice.

        A killed run logged steps after its last checkpoint, which the resumed run trains again; a
        ``resume=never`` run starts from step 0. A last line cut by the kill is dropped too.
        """
        log = self.output_dir / "train_log.jsonl"
        if self.rank != 0 or not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and int(row.get("step", 0)) <= self.state.step:
                kept.append(line + "\n")
        atomic_write_text(log, "".join(kept))

    # -- the loop ----------------------------------------------------------------------------------------

    def _check_finite(self, out: LossOutput) -> None:
        """Stop every rank together on a NaN/inf loss, before the optimizer sees its gradients."""
        bad = all_reduce_sum((~torch.isfinite(out.loss.detach())).float().reshape(1))
        if bool(bad.item()):
            self._stop(f"non-finite loss ({float(out.loss.detach()):.4g})")

    def _stop(self, what: str) -> None:
        last = checkpoints.latest_tag(self.ckpt_dir)
        kept = (
            f"the last good checkpoint is {self.ckpt_dir / last}" if last else "no checkpoint was saved yet"
        )
        raise SelfspecError(
            f"{what} at step {self.state.step + 1}: training stopped and "
            f"{kept}; lower train.lr or check the data, then rerun (train.resume=auto continues from it)"
        )

    def _optimizer_step(self) -> None:
        """``engine.step()``, stopping every rank together when the gradients are not finite.

        A finite loss can still give infinite gradients. ZeRO-0 keeps the full gradients on the parameters until
        the step, so they are checked before it (its clipping would turn a NaN norm into NaN weights). ZeRO-1..3
        check their own partitions, skip such a step and report an infinite ``get_global_grad_norm()``: that
        stops the run too, instead of skipping steps silently.
        """
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary and int(self.engine.zero_optimization_stage()) == 0:
            grads = [p.grad.detach() for p in self.engine.module.parameters() if p.grad is not None]
            local = (
                torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
            )
            if bool(all_reduce_sum((~local).float().reshape(1).to(self.device)).item()):
                self._stop("non-finite gradients")
        self.engine.step()
        norm = self.engine.get_global_grad_norm() if boundary else None
        if norm is not None and not math.isfinite(float(norm)):
            self._stop(f"non-finite gradient norm ({float(norm):.4g})")

    def fit(self) -> dict[str, Any]:
        """Train to ``train.max_steps``; return the final metrics (train window, eval, throughput)."""
        self.maybe_resume()
        self._trim_log()
        max_steps, ga = int(self.t.max_steps), int(self.t.grad_accum)
        stream = self.train_batches.stream(self.state.micro_step)
        bar = tqdm(
            total=max_steps, initial=self.state.step, disable=self.rank != 0, desc="train", unit="step"
        )
        untrained: dict[str, float] = {}
        if self.state.step == 0 and int(self.t.eval_every) > 0:  # the baseline the trained drafter must beat
            untrained = {k.replace("eval/", "eval_untrained/"): v for k, v in self.evaluate().items()}
            self.tracker.log(untrained, 0)
        window, seen, started = Metrics(), 0, time.perf_counter()
        train_metrics: dict[str, float] = {}
        self.engine.train()
        while self.state.step < max_steps:
            for _ in range(ga):
                batch = next(stream)
                out = self.forward(batch, full_vocab=False)
                self._check_finite(out)
                self.engine.backward(out.loss)
                self._optimizer_step()
                self.state.micro_step += 1
                seen += int(batch["num_tokens"])
                window.add(out)
            self.state.step += 1
            maybe_die("train_step")
            self._record({"step": self.state.step, "loss": float(out.loss.detach())})
            bar.update(1)
            if self.state.step % max(1, int(self.t.log_every)) == 0 or self.state.step == max_steps:
                train_metrics = window.reduce("train", self.label)
                train_metrics["train/lr"] = float(self.engine.get_lr()[0])
                train_metrics["train/tokens_per_s"] = seen / max(1e-9, time.perf_counter() - started)
                self.tracker.log(train_metrics, self.state.step)
                bar.set_postfix(
                    loss=f"{train_metrics['train/loss']:.3f}",
                    top1=f"{train_metrics.get(f'train/top1_{self.label}1', 0):.2f}",
                )
                window = Metrics()
            every = int(self.t.eval_every)
            if every > 0 and self.state.step % every == 0 and self.state.step < max_steps:
                self.tracker.log(self.evaluate(), self.state.step)
            save_every = int(self.t.save_every)
            if save_every > 0 and (self.state.step % save_every == 0 or self.state.step == max_steps):
                self.save()
        bar.close()
        elapsed = time.perf_counter() - started
        final = {**untrained, **train_metrics, **self.evaluate()}
        final["train/tokens_per_s"] = (
            seen / max(1e-9, elapsed) if seen else train_metrics.get("train/tokens_per_s", 0.0)
        )
        final["train/steps"] = float(self.state.step)
        self.tracker.log(final, self.state.step)
        self.tracker.summary(final)
        return final
