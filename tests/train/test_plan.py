"""Decisions a training job takes before it starts (selfspec.train.plan)."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from selfspec.heads import build_drafter
from selfspec.train.plan import feature_layers

FEATURE_FAMILIES = {"eagle3": {"type": "eagle3"}, "dflash": {"type": "dflash"}, "eagle": {"type": "eagle"}}


@pytest.mark.parametrize("num_layers", [30, 24, 12])
def test_one_stored_feature_set_serves_every_family_with_its_defaults(num_layers):
    """The first family trained offline on a dataset stores the states every other family reads by default, so
    ``make reproduce`` builds the features once (SmolLM2 has 30 layers: EAGLE-3 reads 27, DFlash 28)."""
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    target = LlamaForCausalLM(cfg).eval()
    drafters = {name: build_drafter(head, target) for name, head in FEATURE_FAMILIES.items()}
    for first in drafters.values():
        stored = set(feature_layers(first, num_layers))
        assert num_layers in stored  # the final state: the target's logits
        for other in drafters.values():
            assert set(other.feature_layers()) <= stored, (first.drafter_type, other.drafter_type)
