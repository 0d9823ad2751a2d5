"""KV caches with per-row lengths: commit exactly the accepted path, crop the rest.

Rows of a batch accept different numbers of tokens per step, so one shared ``DynamicCache`` holds, for row b,
its committed keys in slots ``[0, length[b])`` (left-padding slots inside are masked by ``valid``) and garbage
beyond ``length[b]``, which ``valid`` masks too. Every forward appends its ``T`` new slots after the longest
row; ``commit`` then gathers the kept new slots of each row to ``length[b] ...`` (contiguous, in order) and
crops the cache to the new longest row. Positions are tracked by the caller per row, never from slot indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class KVState:
    """A DynamicCache plus which of its slots each row may attend to."""

    cache: DynamicCache
    valid: torch.Tensor  # (B, S) bool: slot s holds a committed key of row b
    length: torch.Tensor  # (B,) long: slots in use by row b

    @classmethod
    def empty(cls, batch: int, device: torch.device | str) -> KVState:
        return cls(
            DynamicCache(),
            torch.zeros(batch, 0, dtype=torch.bool, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    @property
    def slots(self) -> int:
        return self.valid.shape[1]

    def mask(self, new: torch.Tensor) -> torch.Tensor:
        """4D bool attention mask (B, 1, T, S + T) for ``T`` new tokens whose mutual mask is ``new`` (B, T, T)."""
        b, t, _ = new.shape
        cached = self.valid[:, None, :].expand(b, t, self.slots)  # (B, T, S)
        return torch.cat([cached, new], dim=-1)[:, None]

    def commit(self, keep: torch.Tensor, n_keep: torch.Tensor) -> None:
        """Keep, per row, the new slots ``keep[b, :n_keep[b]]`` (indices into the last forward's ``T`` slots).

        Must follow exactly one forward that appended ``T`` slots to ``cache`` (so the cache holds
        ``slots + T`` keys). Gathers the kept keys/values of every layer to ``length[b] + j`` and crops.
        """
        s0 = self.slots
        total = _cache_len(self.cache)
        new_len = self.length + n_keep  # (B,)
        s_new = int(new_len.max())  # one host sync per step: the new cache size
        s = torch.arange(s_new, device=keep.device)[None, :]  # (1, S')
        j = s - self.length[:, None]  # (B, S') index into the kept list
        is_new = (j >= 0) & (j < n_keep[:, None])
        kept = keep.gather(1, j.clamp(0, keep.shape[1] - 1))  # (B, S')
        src = torch.where(is_new, s0 + kept, s.clamp(max=total - 1))  # (B, S') source slot
        for layer in self.cache.layers:
            idx = src[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx)
        old = torch.nn.functional.pad(self.valid, (0, max(0, s_new - s0)))[:, :s_new]
        self.valid = torch.where(is_new, True, old & (s < self.length[:, None]))
        self.length = new_len

    def start(self, valid: torch.Tensor) -> None:
        """After a prefill forward of ``T`` slots: row b's keys are the slots where ``valid`` (B, T) is True."""
        self.valid = valid.bool()
        self.length = torch.full_like(self.length, valid.shape[1])

    def rollback(self) -> None:
        """Drop the slots appended since the last commit (speculative drafter entries)."""
        s0 = self.slots
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, :s0]
            layer.values = layer.values[:, :, :s0]


def _cache_len(cache: DynamicCache) -> int:
    return cache.layers[0].keys.shape[-2] if cache.layers else 0
