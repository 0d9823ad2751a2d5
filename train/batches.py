"""Batches of the self-distillation data: a deterministic, resumable order and right-padded collation.

The order of epoch e is ``DistributedSampler(seed, epoch=e)`` over the train split, so a resumed run that
knows how many micro batches it consumed (``TrainState.micro_step``) continues with exactly the batches the
uninterrupted run would have seen, without replaying the target on the skipped ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from selfspec.utils import SelfspecError


def collate(
    rows: list[dict[str, Any]], max_len: int, pad_id: int, features: list[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Rows of {input_ids, loss_mask} -> (B, T) tensors, truncated to ``max_len`` and right-padded.

    Right padding keeps every real token's causal prefix free of pads, so no attention mask is needed;
    padded positions have loss_mask 0 and never count. ``features``: the rows' stored target features
    (T_i, layers, H), padded alike into ``features`` (B, T, layers, H).
    """
    ids = [list(r["input_ids"])[:max_len] for r in rows]
    masks = [list(r["loss_mask"])[:max_len] for r in rows]
    seq = max(len(x) for x in ids)
    input_ids = torch.full((len(rows), seq), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), seq), dtype=torch.long)
    for i, (x, m) in enumerate(zip(ids, masks, strict=True)):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.long)
    batch = {"input_ids": input_ids, "loss_mask": loss_mask, "num_tokens": torch.tensor(sum(map(len, ids)))}
    if features is not None:
        f = torch.zeros(len(rows), seq, *features[0].shape[1:], dtype=features[0].dtype)
        for i, x in enumerate(features):
            f[i, : len(x)] = x[:seq]
        batch["features"] = f
    return batch


class Batches:
    """Micro batches of one split for this rank: ``epoch_iter(epoch, start)`` yields from micro batch ``start``."""

    def __init__(
        self,
        split: Any,
        micro_batch_size: int,
        max_len: int,
        pad_id: int,
        rank: int,
        world: int,
        seed: int,
        shuffle: bool = True,
        features: Any = None,
        split_name: str = "train",
        group_by_length: bool = False,
    ) -> None:
        """``features``: a ``selfspec.data.features.FeatureStore`` whose ``split_name`` rows are this split's
        (offline mode); batches then carry the stored target features. ``group_by_length``: micro batches of
        similar lengths (less padding), see ``order``."""
        if len(split) == 0:
            raise SelfspecError(
                "the dataset's train split is empty: raise data.num_prompts or lower data.eval_fraction"
            )
        self.split, self.features, self.split_name = split, features, split_name
        self.mbs = micro_batch_size
        self.max_len = max_len
        self.pad_id = pad_id
        self.sampler = DistributedSampler(
            range(len(split)), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.seed = seed
        self.lengths = [min(len(x), max_len) for x in split["input_ids"]] if group_by_length else None

    def __len__(self) -> int:
        """Micro batches per epoch on this rank (the same on every rank: the sampler pads)."""
        return max(1, -(-len(self.sampler) // self.mbs))

    def order(self, epoch: int, window: int = 16) -> list[int]:
        """This rank's row order for ``epoch``: the sampler's shuffle; with length grouping, each run of
        ``window`` micro batches is sorted by length, cut into micro batches, and those are shuffled (seeded by
        the epoch, so a resumed run sees the same batches). Random rows of 4 pad to their longest by ~20%."""
        self.sampler.set_epoch(epoch)
        order = [int(i) for i in self.sampler]
        if self.lengths is None:
            return order
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        out, w = [], self.mbs * window
        for s in range(0, len(order), w):
            rows = sorted(order[s : s + w], key=lambda i: self.lengths[i])
            batches = [rows[j : j + self.mbs] for j in range(0, len(rows), self.mbs)]
            out += [i for p in torch.randperm(len(batches), generator=gen).tolist() for i in batches[p]]
        return out

    def epoch_iter(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        order = self.order(epoch)
        for b in range(start, len(self)):
            idx = [int(i) for i in order[b * self.mbs : (b + 1) * self.mbs]]
            feats = None
            if self.features is not None:
                feats = [self.features.row(self.split_name, i, self.max_len) for i in idx]
            yield collate([self.split[i] for i in idx], self.max_len, self.pad_id, feats)

    def stream(self, micro_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless micro batches starting at global micro batch ``micro_step`` (epochs roll over)."""
        epoch, start = divmod(micro_step, len(self))
        while True:
            yield from self.epoch_iter(epoch, start)
            epoch, start = epoch + 1, 0


def token_counts(split: Any, vocab_size: int, max_len: int) -> torch.Tensor:
    """(V,) how often each token id occurs at loss_mask positions of ``split`` (EAGLE-3's draft vocabulary)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for row in split:
        ids = torch.tensor(row["input_ids"][:max_len], dtype=torch.long)
        m = torch.tensor(row["loss_mask"][:max_len], dtype=torch.bool)
        counts += torch.bincount(ids[m], minlength=vocab_size)[:vocab_size]
    return counts
