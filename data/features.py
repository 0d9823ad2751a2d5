"""Target features computed once per dataset (``train.features=offline``): what the frozen target gives a drafter.

Training reads the target's hidden states at a few layers (the final post-norm state for Medusa / EAGLE and the
target's logits, three aux layers for EAGLE-3). Online, every epoch recomputes them with a full target forward;
offline, ``build_features`` computes them once and stores them beside the dataset, in the target's dtype (bf16
on a CPU with native bf16 and on GPUs; fp32 for an fp32 target, so offline equals online), and training reads
them back (the logits are recomputed from the final state through the lm_head, a fraction of the forward).
SpecForge and speculators offer both modes too.

Layout: ``<dataset folder>/features/<key>/`` where the key covers the target (weights fingerprint), the layers,
the dtype and the dataset itself (the dataset folder's name is its content hash)::

    meta.json                 target and dataset identity, layers, hidden size, rows per split
    <split>/NNNNN.safetensors  rows [NNNNN * shard_rows, ...) of the split: ``hidden`` (tokens, layers, H) and
                              ``offsets`` (rows + 1,) into it; committed atomically, so a kill loses one shard
    COMPLETE                  written last; a folder without it is resumed shard by shard

Rows are stored whole (prefix features do not depend on what follows), so any ``train.max_seq_len`` reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from selfspec.faults import maybe_die
from selfspec.target import weights_fingerprint
from selfspec.utils import SelfspecError, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


def _key(fingerprint: str, layers: Sequence[int], dataset: Path) -> str:
    payload = {"target": fingerprint, "layers": list(layers), "dataset": dataset.resolve().parent.name}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def features_root(dataset: Path) -> Path:
    """``dataset`` is the DatasetDict folder (``.../<dataset>/dataset``); features live beside it."""
    return Path(dataset).resolve().parent / "features"


def estimate_bytes(num_tokens: int, num_layers: int, hidden_size: int, dtype: torch.dtype) -> int:
    return num_tokens * num_layers * hidden_size * dtype.itemsize


class FeatureStore:
    """Read side of a complete feature folder: ``rows(split, indices)`` -> per row (T, layers, H) tensors."""

    def __init__(self, folder: Path, target: Any = None, dataset: Path | None = None) -> None:
        self.folder = Path(folder)
        if not (self.folder / COMPLETE).exists():
            raise SelfspecError(f"{self.folder} is not a complete feature cache: rerun to finish it")
        self.meta = json.loads((self.folder / "meta.json").read_text())
        if target is not None and self.meta["weights_fingerprint"] != weights_fingerprint(target):
            raise SelfspecError(
                f"the features in {self.folder} were made by another target ({self.meta['target']}): "
                "delete them or point train.features_dir elsewhere"
            )
        if dataset is not None and self.meta["dataset"] != Path(dataset).resolve().parent.name:
            raise SelfspecError(
                f"the features in {self.folder} were made from another dataset ({self.meta['dataset']}): "
                "delete them or point train.features_dir elsewhere"
            )
        self.layers: list[int] = list(self.meta["layers"])
        self.shard_rows = int(self.meta["shard_rows"])
        self._open: dict[tuple[str, int], Any] = {}

    def index_of(self, layers: Sequence[int]) -> list[int]:
        """Positions of ``layers`` in the stored layer axis (all must be stored)."""
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise SelfspecError(f"{self.folder} stores layers {self.layers}, not {missing}")
        return [self.layers.index(i) for i in layers]

    def _shard(self, split: str, shard: int) -> tuple[Any, torch.Tensor]:
        key = (split, shard)
        if key not in self._open:
            f = safe_open(str(self.folder / split / f"{shard:05d}.safetensors"), framework="pt")
            self._open[key] = (f, f.get_tensor("offsets"))
        return self._open[key]

    def row(self, split: str, index: int, max_len: int | None = None) -> torch.Tensor:
        """(T, layers, H) stored features of row ``index`` of ``split`` (first ``max_len`` tokens)."""
        f, offsets = self._shard(split, index // self.shard_rows)
        i = index % self.shard_rows
        start, end = int(offsets[i]), int(offsets[i + 1])
        if max_len is not None:
            end = min(end, start + max_len)
        return f.get_slice("hidden")[start:end]


def find_features(dataset: Path, target: Any, layers: Sequence[int]) -> FeatureStore | None:
    """A complete feature folder of this dataset and target that stores all of ``layers``, if any."""
    root = features_root(dataset)
    fingerprint = weights_fingerprint(target)
    for meta_file in sorted(root.glob("*/meta.json")) if root.is_dir() else []:
        meta = json.loads(meta_file.read_text())
        if (
            (meta_file.parent / COMPLETE).exists()
            and meta.get("weights_fingerprint") == fingerprint
            and set(layers) <= set(meta.get("layers", []))
        ):
            return FeatureStore(meta_file.parent, dataset=dataset)
    return None


@torch.no_grad()
def build_features(
    dataset: Path,
    splits: Any,
    target: Any,
    target_name: str,
    layers: Sequence[int],
    batch_tokens: int = 8192,
    shard_rows: int = 256,
) -> FeatureStore:
    """Compute (or resume, or reuse) the stored features of every split of ``splits``; return the store."""
    found = find_features(dataset, target, layers)
    if found is not None:
        logger.info("reusing the target features in %s", found.folder)
        return found
    layers = sorted(set(layers))
    fingerprint = weights_fingerprint(target)
    folder = features_root(dataset) / _key(fingerprint, layers, Path(dataset))
    meta = {
        "target": target_name,
        "weights_fingerprint": fingerprint,
        "dataset": Path(dataset).resolve().parent.name,
        "layers": layers,
        "hidden_size": int(target.config.get_text_config().hidden_size),
        "dtype": str(target.dtype).removeprefix("torch."),
        "shard_rows": shard_rows,
        "rows": {name: len(split) for name, split in splits.items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    old = folder / "meta.json"
    if old.exists() and json.loads(old.read_text()) != meta:  # a half-built folder of other settings
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
    atomic_write_json(folder / "meta.json", meta)
    total = sum(sum(len(r) for r in split["input_ids"]) for split in splits.values())
    bar = tqdm(total=total, unit="tok", desc="target features")
    for name, split in splits.items():
        for shard in range((len(split) + shard_rows - 1) // shard_rows):
            rows = range(shard * shard_rows, min(len(split), (shard + 1) * shard_rows))
            dest = folder / name / f"{shard:05d}.safetensors"
            if not dest.exists():
                _write_shard(dest, [split[i]["input_ids"] for i in rows], target, layers, batch_tokens)
            bar.update(sum(len(split[i]["input_ids"]) for i in rows))
    bar.close()
    atomic_write_text(folder / COMPLETE, "ok\n")
    return FeatureStore(folder, dataset=dataset)


def _write_shard(
    dest: Path, rows: list[list[int]], target: Any, layers: list[int], batch_tokens: int
) -> None:
    """Features of ``rows`` (batched by length, right-padded: causal, so padding never reaches a real token)."""
    device = target.get_output_embeddings().weight.device
    out: list[torch.Tensor | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    start = 0
    while start < len(order):
        width = len(rows[order[start]])
        end = start + 1
        while end < len(order) and (end - start + 1) * len(rows[order[end]]) <= batch_tokens:
            end += 1
        batch = order[start:end]
        width = len(rows[batch[-1]])
        ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        for j, i in enumerate(batch):
            ids[j, : len(rows[i])] = torch.tensor(rows[i], device=device)
        # The base model alone: features need no logits (in bf16 on CPU even transformers' lm_head over
        # ``hidden[:, -1:]`` copies the whole transposed head; selfspec.target.project).
        states = target.get_decoder()(input_ids=ids, output_hidden_states=True).hidden_states
        stacked = torch.stack([states[k] for k in layers], dim=2)  # (B, T, layers, H), the target's dtype
        for j, i in enumerate(batch):
            out[i] = stacked[j, : len(rows[i])].cpu()
        start = end
    offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    save_file({"hidden": torch.cat(out).contiguous(), "offsets": offsets}, str(tmp))
    maybe_die("feature_shard")
    os.replace(tmp, dest)
