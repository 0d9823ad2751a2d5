"""A preallocated KV cache written in place: fixed slots (batch rows), each with its own length.

transformers' ``DynamicCache`` grows by concatenation, so every forward copies the whole cache, and rows of a
batch cannot be at different lengths without padding holes. ``SlotCache`` allocates one tensor
``(layers, 2, slots, kv_heads, max_len, head_dim)`` on the first write and lets the caller say, before each
forward, which rows run and where their new keys go (``SlotCache.plan``); attention then reads the first
``kv_len`` positions of those rows, and a 4D bool mask (passed to the model by the caller) hides whatever each
row has not written. It plugs into any transformers model through the standard ``Cache`` interface (``update``
per layer), so the model code is untouched. Used by continuous-batching data generation
(``selfspec.data.engine_hf``) and by the speculative decoder, whose accepted entries are moved into place
with ``move`` (two indexing ops for all layers) instead of rebuilding the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass
class _Plan:
    """Where the next forward writes: rows (R,) or None for all slots in order, positions (R, T), read length."""

    rows: torch.Tensor | None = None
    write_pos: torch.Tensor | None = None
    kv_len: int = 0


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values: views into the owning ``SlotCache``'s storage."""

    is_compileable = False
    is_croppable = False

    def __init__(self, owner: SlotCache, index: int) -> None:
        super().__init__()
        self.owner, self.index = owner, index

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.owner.allocate(key_states)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write (R, H, T, D) states at the planned positions; return (R, H, kv_len, D) keys and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        p = self.owner.plan_
        rows = p.rows if p.rows is not None else self.owner.all_rows
        r = rows[:, None]  # (R, 1) broadcast against write_pos (R, T)
        self.keys[r, :, p.write_pos] = key_states.transpose(1, 2)  # (R, T, H, D)
        self.values[r, :, p.write_pos] = value_states.transpose(1, 2)
        if p.rows is None:  # every slot in order: a view, no copy
            return self.keys[:, :, : p.kv_len], self.values[:, :, : p.kv_len]
        return self.keys[p.rows, :, : p.kv_len], self.values[p.rows, :, : p.kv_len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.plan_.kv_len, 0

    def get_seq_length(self) -> int:
        return self.owner.plan_.kv_len

    def get_max_length(self) -> int:
        return self.owner.max_len


class SlotCache(Cache):
    """``slots`` rows of ``max_len`` positions for each of ``num_layers`` layers; see the module docstring."""

    def __init__(self, num_layers: int, slots: int, max_len: int) -> None:
        self.plan_ = _Plan()
        self.slots, self.max_len = slots, max_len
        self.storage: torch.Tensor | None = None
        self.all_rows: torch.Tensor | None = None
        super().__init__(layers=[SlotLayer(self, i) for i in range(num_layers)])

    def allocate(self, like: torch.Tensor) -> None:
        """Storage for every layer, shaped after the first layer's (R, H, T, D) key states."""
        _, h, _, d = like.shape
        shape = (len(self.layers), 2, self.slots, h, self.max_len, d)
        self.storage = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.all_rows = torch.arange(self.slots, device=like.device)
        for i, layer in enumerate(self.layers):
            layer.keys, layer.values = self.storage[i, 0], self.storage[i, 1]
            layer.device, layer.is_initialized = like.device, True

    def plan(self, write_pos: torch.Tensor, kv_len: int, rows: torch.Tensor | None = None) -> None:
        """The next forward writes row ``rows[i]``'s ``T`` new states at ``write_pos[i]`` (R, T) and attends to
        positions ``[0, kv_len)`` of those rows. ``rows=None``: all slots, in order (no copies)."""
        if kv_len > self.max_len:
            raise ValueError(f"slot cache of {self.max_len} positions is too short for {kv_len}")
        self.plan_.rows, self.plan_.write_pos, self.plan_.kv_len = rows, write_pos, kv_len

    @torch.no_grad()
    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Per row b, copy the entries at positions ``src[b]`` to ``dst[b]`` (B, K), every layer, in place.

        The decoder commits an accepted tree path this way: a few positions per row, not the whole cache."""
        if self.storage is None:
            return
        r = self.all_rows[:, None]  # (B, 1)
        self.storage[:, :, r, :, dst] = self.storage[:, :, r, :, src]
