"""Batches: an empty split is one clear error, not a bare ValueError from inside the collation."""

from __future__ import annotations

import datasets
import pytest

from selfspec.train.batches import Batches
from selfspec.utils import SelfspecError


def test_an_empty_train_split_is_one_clear_error():
    empty = datasets.Dataset.from_dict({"input_ids": [], "loss_mask": []})
    with pytest.raises(SelfspecError, match="train split is empty: raise data.num_prompts"):
        Batches(empty, micro_batch_size=2, max_len=16, pad_id=0, rank=0, world=1, seed=0)
