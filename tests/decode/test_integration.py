"""On the embedded target (SmolLM2-135M): greedy speculative output equals ``target.generate``, batch 1 and 4.

Untrained drafters built here (losslessness holds for any drafter); swap in trained folders from train/ when
they exist. Lean: 12 new tokens per prompt.
"""

from __future__ import annotations

import pytest
import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.heads import build_drafter

pytestmark = pytest.mark.integration
NEW = 12
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "2+2=", "Name three colours."]


@pytest.fixture(scope="module")
def chat_batch(embedded_target):
    model, tok = embedded_target
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]  # fmt: skip
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=NEW, pad_token_id=tok.pad_token_id)
    return enc["input_ids"], enc["attention_mask"], ref


@pytest.mark.parametrize(
    "head_cfg,options",
    [
        ({"type": "medusa", "num_heads": 3}, {}),
        ({"type": "eagle"}, {"depth": 4, "topk": 3, "total_tokens": 10}),
        ({"type": "eagle3", "draft_vocab_size": 8192}, {"depth": 4, "topk": 3, "total_tokens": 10}),
        ({"type": "draft_model", "num_layers": 2}, {"depth": 3}),
    ],
    ids=["medusa", "eagle", "eagle3", "draft_model"],
)
def test_embedded_greedy_lossless(head_cfg, options, embedded_target, chat_batch):
    model, tok = embedded_target
    ids, mask, ref = chat_batch
    dec = SpeculativeDecoder(model, build_drafter(head_cfg, model), **options)
    four = dec.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=tok.pad_token_id)
    assert torch.equal(four.sequences, ref)
    row = ids[2:3][:, mask[2].bool()]
    one = dec.generate(row, max_new_tokens=NEW)
    want = model.generate(row, attention_mask=torch.ones_like(row), do_sample=False, max_new_tokens=NEW)
    assert torch.equal(one.sequences, want)
