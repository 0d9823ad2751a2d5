"""Training-step A/B for EAGLE-3 on a real dataset with stored target features, interleaved in one process.

before: the trainer's loss as of c7f0247 (the target's logits over its whole 49k vocabulary for every row, the
drafter's lm_head over every row); now: the draft vocabulary's target logits only, the drafter's lm_head over
the counted rows only. Same batches, same drafter weights, forward + backward, no optimiser step.

python results/train_step/ab.py [+experiment overrides...]   (default: the quick-budget 512 x 128 dataset)
"""

from __future__ import annotations

import sys
import time

import torch
from hydra import compose, initialize_config_module
from transformers import DynamicCache

from selfspec.data import build_dataset, load_splits
from selfspec.heads import build_drafter
from selfspec.target import load_target
from selfspec.train import losses
from selfspec.train.batches import token_counts
from selfspec.train.config import register_train
from selfspec.train.loop import Trainer
from selfspec.train.losses import _mean, _rows, _shift_ids, _stack, soft_ce, ttt_mask
from selfspec.train.parallel import init_distributed
from selfspec.train.plan import prepare_features
from selfspec.utils import resolve_device


def eagle3_loss_before(drafter, input_ids, loss_mask, tgt_logits, features, lc):
    """c7f0247's eagle3_loss: logits for every row, the full-vocabulary target indexed per step."""
    b, seq = input_ids.shape
    r = seq - 1
    draft_to_target = torch.arange(drafter.d2t.numel()) + drafter.d2t
    hidden = drafter.fuse(torch.cat(features, dim=-1)[:, :r])
    cache = DynamicCache()
    base_pos = torch.arange(r).expand(b, r)
    out_l, correct, count = [], [], []
    for j in range(int(drafter.config.ttt_steps)):
        hidden, logits = drafter(
            hidden, _shift_ids(input_ids, 1 + j, r), base_pos + j, ttt_mask(r, j, b, "cpu"), cache
        )
        n = max(0, seq - j - 2)
        pred, tgt = _rows(logits[:, :n], tgt_logits[:, j + 1 : j + 1 + n], loss_mask[:, j + 2 : j + 2 + n])
        out_l.append(_mean(soft_ce(pred, tgt[:, draft_to_target], lc.temperature)))
        correct.append((draft_to_target[pred.argmax(-1)] == tgt.argmax(-1)).sum())
        count.append(pred.shape[0])
    return _stack(out_l, correct, count, [lc.ttt_decay**j for j in range(len(out_l))], input_ids.device)


def main() -> None:
    register_train()
    overrides = ["+experiment=eagle3", "data.num_prompts=512", "data.max_new_tokens=128", *sys.argv[1:]]
    with initialize_config_module("selfspec.conf", version_base=None):
        cfg = compose("config", overrides=overrides)
    init_distributed(resolve_device("cpu"))
    target, tok = load_target(cfg.target.name_or_path, device="cpu", dtype="fp32")
    dataset = build_dataset(cfg, target, tok)
    splits = load_splits(dataset)
    counts = token_counts(splits["train"], target.config.vocab_size, int(cfg.train.max_seq_len))
    drafter = build_drafter(cfg.head, target, token_counts=counts)
    feats = prepare_features(cfg, target, dataset, splits, drafter, 2.0, 0)
    trainer = Trainer(cfg, target, drafter, splits, int(tok.pad_token_id), __import__("pathlib").Path("/tmp/ab"),
                      0, 1, resolve_device("cpu"), features=feats)  # fmt: skip
    batches = [b for _, b in zip(range(6), trainer.train_batches.epoch_iter(0), strict=False)]
    now_fn = losses.LOSSES["eagle3"]
    for batch in batches:  # the same loss and gradients on both paths
        grads = {}
        for name in ("before", "now"):
            losses.LOSSES["eagle3"] = eagle3_loss_before if name == "before" else now_fn
            out = trainer.forward(batch, full_vocab=name == "before")
            trainer.engine.backward(out.loss)
            grads[name] = (
                out.per_head.detach(),
                [p.grad.clone() for p in drafter.parameters() if p.grad is not None],
            )
            trainer.engine.zero_grad()
        torch.testing.assert_close(grads["now"][0], grads["before"][0], rtol=1e-4, atol=1e-5)
        for a, b in zip(grads["now"][1], grads["before"][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    print("per-step losses and gradients equal on both paths")
    times = {"before": [], "now": []}
    for _ in range(2):
        for batch in batches:
            for name in ("before", "now"):
                losses.LOSSES["eagle3"] = eagle3_loss_before if name == "before" else now_fn
                t0 = time.perf_counter()
                out = trainer.forward(batch, full_vocab=name == "before")
                trainer.engine.backward(out.loss)
                times[name].append(time.perf_counter() - t0)
                trainer.engine.zero_grad()
    before, now = sum(times["before"]), sum(times["now"])
    tokens = sum(int(b["num_tokens"]) for b in batches) * 2
    print(f"{len(batches)} micro batches x 2, {tokens} tokens, fp32, {torch.get_num_threads()} threads")
    print("| loss path | s per micro batch | tokens/s |\n|---|---:|---:|")
    print(f"| before (c7f0247) | {before / len(times['before']):.2f} | {tokens / before:.0f} |")
    print(f"| now | {now / len(times['now']):.2f} | {tokens / now:.0f} |")
    print(f"speed-up {before / now:.2f}x")


if __name__ == "__main__":
    main()
