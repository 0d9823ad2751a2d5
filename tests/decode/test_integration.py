"""On the embedded target (SmolLM2-135M): drafters trained on it by ``train_job`` decode losslessly.

Each family trains briefly in-process on the target's own answers (a shared 8-prompt dataset), is exported,
reloaded from its folder, and must reproduce ``target.generate(do_sample=False)`` token for token at batch 4
(left-padded chat prompts) and batch 1.
"""

from __future__ import annotations

import pytest
import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.heads import load_drafter
from selfspec.train.run import train_job
from tests.train.conftest import compose

pytestmark = pytest.mark.integration
NEW = 24
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "2+2=", "Name three colours."]
BRIEF = [
    "data.num_prompts=8",
    "data.max_new_tokens=48",
    "train.max_steps=12",
    "train.micro_batch_size=2",
    "train.max_seq_len=192",
    "train.warmup_steps=2",
    "train.report=false",
    "train.eval_every=0",
    "train.save_every=0",
    "device=cpu",
]
FAMILIES = {
    "medusa": (["+experiment=medusa", "head.num_heads=3"], {}),
    "eagle": (["+experiment=eagle"], {"depth": 4, "topk": 3, "total_tokens": 10}),
    "eagle3": (["+experiment=eagle3", "head.ttt_steps=3"], {"depth": 4, "topk": 3, "total_tokens": 10}),
    "draft_model": (["+experiment=draft", "head.num_layers=2"], {"depth": 3}),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("embedded-data"))


@pytest.fixture(scope="module")
def chat_batch(embedded_target):
    model, tok = embedded_target
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]  # fmt: skip
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=NEW, pad_token_id=tok.pad_token_id)
    return enc["input_ids"], enc["attention_mask"], ref


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trained_drafter_is_lossless(family, embedded_target, chat_batch, data_dir, tmp_path):
    model, tok = embedded_target
    overrides, options = FAMILIES[family]
    cfg = compose([*overrides, *BRIEF, f"data.cache_dir={data_dir}", f"output_dir={tmp_path}"])
    folder = train_job(cfg).folder
    dec = SpeculativeDecoder(model, load_drafter(folder, model, tok), **options)

    ids, mask, ref = chat_batch
    four = dec.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=tok.pad_token_id)
    assert torch.equal(four.sequences, ref)
    assert four.stats.offered_by_position  # drafts were verified (12 steps need not make them accepted)

    row = ids[1:2][:, mask[1].bool()]
    one = dec.generate(row, max_new_tokens=NEW)
    want = model.generate(row, attention_mask=torch.ones_like(row), do_sample=False, max_new_tokens=NEW)
    assert torch.equal(one.sequences, want)
