"""Greedy speculative decoding is token-for-token ``target.generate(do_sample=False)``, for every drafter.

Untrained drafters (losslessness holds for any drafter) and the target as its own draft model (a perfect
drafter: long acceptances). Batch 1, and batch 4 left-padded to different lengths with an EOS mid-way.
"""

from __future__ import annotations

import pytest
import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.heads import build_drafter
from selfspec.utils import SelfspecError

NEW = 20
DRAFTERS = {
    "medusa": ({"type": "medusa", "num_heads": 3}, {}),
    "medusa-chain": ({"type": "medusa", "num_heads": 3}, {"tree": False}),
    "eagle-tree": ({"type": "eagle"}, {"depth": 3, "topk": 3, "total_tokens": 8}),
    "eagle-chain": ({"type": "eagle"}, {"tree": False, "depth": 3}),
    "eagle-reduced-vocab": (
        {"type": "eagle", "draft_vocab_size": 96},
        {"depth": 3, "topk": 3, "total_tokens": 8},
    ),
    "eagle3-tree": ({"type": "eagle3", "draft_vocab_size": 128}, {"depth": 3, "topk": 3, "total_tokens": 8}),
    "draft_model": ({"type": "draft_model", "num_layers": 1}, {"depth": 3}),
    "draft_model-tree": (
        {"type": "draft_model", "num_layers": 1},
        {"depth": 3, "topk": 2, "total_tokens": 6},
    ),
    "dflash": ({"type": "dflash", "draft_vocab_size": 128, "block_size": 5, "num_layers": 2}, {}),
    "dflash-depth2": (
        {"type": "dflash", "draft_vocab_size": 128, "block_size": 5, "num_layers": 1},
        {"depth": 2},
    ),
    "dflash-tree": (
        {"type": "dflash", "draft_vocab_size": 0, "block_size": 4, "num_layers": 1},
        {"topk": 3, "total_tokens": 8},
    ),
}


@pytest.fixture(scope="module")
def batch(tiny_target):
    """4 left-padded prompts of different lengths, the greedy reference, and an EOS id that stops row 0 early."""
    model, tok = tiny_target
    torch.manual_seed(3)
    lengths = [9, 5, 7, 3]
    ids = torch.full((4, 9), tok.pad_token_id)
    mask = torch.zeros(4, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 9 - n :] = torch.randint(0, 250, (n,))
        mask[i, 9 - n :] = 1
    free = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    eos = int(free[0, 9 + 4])  # row 0 stops after 5 new tokens (or earlier if it repeats)
    ref = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    return ids, mask, eos, ref


def _check(dec, tiny_target, batch):
    model, tok = tiny_target
    ids, mask, eos, ref = batch
    one = dec.generate(ids[:1], max_new_tokens=NEW)  # batch 1, no padding, target's own EOS
    want = model.generate(
        ids[:1], attention_mask=torch.ones_like(ids[:1]), do_sample=False, max_new_tokens=NEW
    )
    assert torch.equal(one.sequences, want)
    four = dec.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=tok.pad_token_id
    )
    assert torch.equal(four.sequences, ref)
    s = four.stats
    assert s.new_tokens == int((ref[:, 9:] != tok.pad_token_id).sum()) or eos == tok.pad_token_id
    assert s.target_forwards >= 1 and s.mean_accepted_tokens >= 1.0
    for st in (one.stats, four.stats):  # the rates are the counts' ratios; deeper positions are reached less
        assert len(st.offered_by_position) == len(st.acceptance_by_position)
        for rate, off, got in zip(
            st.acceptance_by_position, st.offered_by_position, st.accepted_by_position, strict=True
        ):
            assert 0 <= got <= off and rate == pytest.approx(got / off)
        assert st.offered_by_position == sorted(st.offered_by_position, reverse=True)
    return one, four


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_lossless(name, tiny_target, batch):
    model, _ = tiny_target
    head_cfg, options = DRAFTERS[name]
    drafter = build_drafter(head_cfg, model)
    _check(SpeculativeDecoder(model, drafter, **options), tiny_target, batch)


@pytest.mark.parametrize(
    "options", [{"depth": 4}, {"depth": 3, "topk": 2, "total_tokens": 7}], ids=["chain", "tree"]
)
def test_perfect_draft_accepts_everything(options, tiny_target, batch):
    model, _ = tiny_target
    one, _ = _check(SpeculativeDecoder(model, model, **options), tiny_target, batch)
    assert all(rate == 1.0 for rate in one.stats.acceptance_by_position)
    if "topk" not in options:  # a chain of depth d: d + 1 tokens per verification
        assert one.stats.target_forwards <= 1 + -(-(NEW - 1) // (options["depth"] + 1))


def test_stream_and_callback_match_generate(tiny_target, batch):
    model, _ = tiny_target
    ids = batch[0][:1]
    dec = SpeculativeDecoder(model, model, depth=3)
    streamed = [t for step in dec.stream(ids, max_new_tokens=NEW) for t in step[0]]
    seen: list[int] = []
    res = dec.generate(ids, max_new_tokens=NEW, callback=lambda step: seen.extend(step[0]))
    assert streamed == seen == res.sequences[0, ids.shape[1] :].tolist()


def test_drafter_for_another_target_is_refused(tiny_target):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, _ = tiny_target
    other = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    drafter = build_drafter({"type": "medusa", "num_heads": 2}, other)
    with pytest.raises(SelfspecError, match="built for another target"):
        SpeculativeDecoder(model, drafter)
    with pytest.raises(SelfspecError, match="built for another target"):
        SpeculativeDecoder(model, other)


def test_a_drafter_trains_after_decoding(tiny_target, batch):
    """Decoding runs in inference mode; what a drafter cached there (EAGLE's draft-vocabulary rows of the target's
    lm_head) must not break a training backward afterwards."""
    from selfspec.heads import target_forward

    model, _ = tiny_target
    ids = batch[0][:1]
    drafter = build_drafter({"type": "eagle", "draft_vocab_size": 96}, model)
    SpeculativeDecoder(model, drafter, depth=2, topk=2, total_tokens=4).generate(ids, max_new_tokens=4)
    feats = target_forward(model, ids, layers=drafter.feature_layers()).hidden[0]
    pos = torch.arange(ids.shape[1])[None]
    _, logits = drafter(feats, ids, pos)
    logits.float().pow(2).mean().backward()
    assert drafter.fc.weight.grad is not None and bool(drafter.fc.weight.grad.abs().sum() > 0)
