"""KV caches with per-row lengths: commit exactly the accepted path, in place.

Rows of a batch accept different numbers of tokens per step. Each row b keeps its committed keys in positions
``[0, length[b])`` of a preallocated ``SlotCache`` (left-padding positions inside are masked by ``valid``).
A forward writes its ``T`` new entries right after the row's committed ones and any entries still *pending*
(written by earlier forwards of the same step, e.g. the levels of a draft tree); ``commit`` moves the pending
entries a row keeps to ``length[b] ...`` (contiguous, in order) and drops the rest, touching only those
positions. Positions (rotary) are tracked by the caller per row, never from slot indices.
"""

from __future__ import annotations

import torch

from selfspec.slots import SlotCache


class KVState:
    """A ``SlotCache`` plus which of its positions each row may attend to."""

    def __init__(self, cache: SlotCache, batch: int, device: torch.device | str, reserve: int = 0) -> None:
        """``reserve``: slots kept free past the committed ones for one step's pending entries; a row whose
        committed entries reach ``max_len - reserve`` commits no more (only a finished row, whose later steps
        are discarded, gets there: the caller sizes the cache for every live row)."""
        self.cache = cache
        self.limit = cache.max_len - reserve
        self.valid = torch.zeros(
            batch, cache.max_len, dtype=torch.bool, device=device
        )  # committed, attendable
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # committed positions per row
        self.host_length = [0] * batch  # the same on the host: sizing a forward needs no device sync
        self.pending = 0  # entries written after ``length`` since the last commit

    @classmethod
    def empty(
        cls,
        batch: int,
        device: torch.device | str,
        num_layers: int = 1,
        max_len: int = 4096,
        reserve: int = 0,
    ) -> KVState:
        return cls(SlotCache(num_layers, batch, max_len), batch, device, reserve)

    def mask(self, new: torch.Tensor, written: int | None = None) -> torch.Tensor:
        """Plan a forward that writes ``written`` new entries (default: one per query) and return its 4D bool
        mask (B, 1, T, kv_len) for its ``T`` queries, True = attend.

        ``new`` (B, T, P + written): which of the pending entries (the ``P`` written since the last commit, then
        the new ones) each query attends to; every query also attends to its row's committed keys. A query-less
        entry (DFlash's context features: keys and values only) is written but asks nothing.
        """
        b, t, f = new.shape
        w = t if written is None else written
        if f != self.pending + w:
            raise ValueError(f"mask over {f} entries, but {self.pending} are pending and {w} new")
        dev = new.device
        write = self.length[:, None] + self.pending + torch.arange(w, device=dev)  # (B, W)
        kv_len = max(self.host_length) + f  # the attended width
        self.cache.plan(write, kv_len)
        rel = torch.arange(kv_len, device=dev)[None, :] - self.length[:, None]  # (B, K) key - row length
        committed = self.valid[:, :kv_len] & (rel < 0)
        in_new = (rel >= 0) & (rel < f)
        pend = new.gather(2, rel.clamp(0, f - 1)[:, None, :].expand(b, t, kv_len)) & in_new[:, None]
        self.pending = f
        return (committed[:, None, :] | pend)[:, None]

    def commit(self, keep: torch.Tensor, n_keep: torch.Tensor, n_host: list[int] | None = None) -> None:
        """Keep, per row, the pending entries ``keep[b, :n_keep[b]]`` (indices among the pending entries), in
        that order, as committed keys; the other pending entries are dropped. ``n_host``: ``n_keep`` already
        on the host (the decoder reads it once per step); without it, it is read here."""
        n_host = n_keep.tolist() if n_host is None else n_host
        if max(h + n for h, n in zip(self.host_length, n_host, strict=True)) > self.limit:  # finished rows
            n_host = [max(0, min(n, self.limit - h)) for h, n in zip(self.host_length, n_host, strict=True)]
            n_keep = torch.tensor(n_host, device=n_keep.device)
        j = torch.arange(keep.shape[1], device=keep.device)[None]  # (1, K)
        dst = self.length[:, None] + j  # < max_len: rows stop at limit, the reserve holds the pending
        used = j < n_keep[:, None]
        self.cache.move(torch.where(used, self.length[:, None] + keep, dst), dst)
        self.valid.scatter_(1, dst, self.valid.gather(1, dst) | used)
        self.length = self.length + n_keep
        self.host_length = [a + b for a, b in zip(self.host_length, n_host, strict=True)]
        self.pending = 0

    def start(self, valid: torch.Tensor) -> None:
        """After a prefill forward of ``T`` entries: row b's keys are the positions where ``valid`` (B, T) is
        True (left padding is not)."""
        self.valid[:, : valid.shape[1]] = valid.bool()
        self.length = torch.full_like(self.length, valid.shape[1])
        self.host_length = [valid.shape[1]] * valid.shape[0]
        self.pending = 0

    def rollback(self) -> None:
        """Drop the pending entries (speculative drafter entries): later forwards write over them."""
        self.pending = 0
