"""``SpeculativeDecoder.from_pretrained``: the target named in the drafter folder is loaded and checked."""

from __future__ import annotations

import pytest
import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.heads import build_drafter, save_drafter
from selfspec.target import TINY_TARGET, tokenizer_fingerprint
from selfspec.utils import SelfspecError


def test_from_pretrained_loads_target_and_decodes(tiny_target, tmp_path):
    model, tok = tiny_target
    path = save_drafter(build_drafter({"type": "eagle"}, model), tmp_path / "eagle", TINY_TARGET,
                        tokenizer_fingerprint(tok))  # fmt: skip
    dec = SpeculativeDecoder.from_pretrained(str(path), device="cpu", dtype="fp32", depth=3)
    assert dec.tokenizer is not None and dec.drafter.drafter_type == "eagle"
    ids = torch.tensor([[10, 20, 30, 40]])
    want = dec.target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
    assert torch.equal(dec.generate(ids, max_new_tokens=12).sequences, want)


def test_unknown_option_is_refused(tiny_target):
    model, _ = tiny_target
    with pytest.raises(SelfspecError, match="unknown decoder options"):
        SpeculativeDecoder(model, model, dept=3)
