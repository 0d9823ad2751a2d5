"""Drafter folders: save/load round trips, target checks, the draft model as a plain transformers folder."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from selfspec.heads import build_drafter, load_drafter, read_metadata, save_drafter
from selfspec.target import tokenizer_fingerprint
from selfspec.utils import SelfspecError

from .conftest import FAMILIES, draft_outputs, make_drafter, randomise


def _save(d, path, tok, **kw):
    return save_drafter(d, path, "tiny-random", tokenizer_fingerprint(tok), **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip(tiny_target, input_ids, tmp_path, family):
    target, tok = tiny_target
    d = make_drafter(family, target)
    _save(d, tmp_path / "d", tok, extra_files={"README.md": "# card\n"})
    assert (tmp_path / "d" / "README.md").read_text() == "# card\n"
    meta = read_metadata(tmp_path / "d")
    assert meta["drafter_type"] == family and meta["target"]["vocab_size"] == 259
    loaded = load_drafter(tmp_path / "d", target=target, tokenizer=tok)
    assert type(loaded) is type(d) and loaded.config == d.config
    for a, b in zip(
        draft_outputs(d, target, input_ids), draft_outputs(loaded, target, input_ids), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eagle_reduced_vocabulary_round_trip(tiny_target, input_ids, tmp_path):
    """EAGLE with a draft vocabulary (``head.draft_vocab_size``): the map and the outputs survive the folder."""
    target, tok = tiny_target
    counts = torch.arange(target.config.vocab_size, dtype=torch.float)
    d = build_drafter({"type": "eagle", "draft_vocab_size": 64}, target, token_counts=counts)
    randomise(d)
    d.eval()
    assert d.reduced and int(d.draft_to_target(torch.tensor([0]))) == target.config.vocab_size - 64
    _save(d, tmp_path / "d", tok)
    loaded = load_drafter(tmp_path / "d", target=target, tokenizer=tok)
    assert torch.equal(loaded.d2t, d.d2t) and torch.equal(loaded.t2d, d.t2d)
    for a, b in zip(
        draft_outputs(d, target, input_ids), draft_outputs(loaded, target, input_ids), strict=True
    ):
        assert a.shape[-1] in (64, target.config.hidden_size)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["medusa", "eagle3"])
def test_weights_hold_drafter_only(tiny_target, tmp_path, family):
    from safetensors.torch import load_file

    target, tok = tiny_target
    d = make_drafter(family, target)
    _save(d, tmp_path / "d", tok)
    keys = set(load_file(str(tmp_path / "d" / "model.safetensors")))
    assert keys == set(d.state_dict())
    assert not any("embed_tokens" in k for k in keys)


def _other_target(**overrides) -> LlamaForCausalLM:
    cfg = dict(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.mark.parametrize(
    ("override", "word"), [({"hidden_size": 32}, "hidden"), ({"vocab_size": 300}, "vocab")]
)
def test_mismatched_target_refused(tiny_target, tmp_path, override, word):
    target, tok = tiny_target
    _save(make_drafter("eagle", target), tmp_path / "d", tok)
    with pytest.raises(SelfspecError, match=word) as err:
        load_drafter(tmp_path / "d", target=_other_target(**override))
    msg = str(err.value)
    assert "\n" not in msg and "tiny-random" in msg and "trained for" in msg


def test_tokenizer_mismatch_refused(tiny_target, tmp_path):
    target, tok = tiny_target
    save_drafter(make_drafter("medusa", target), tmp_path / "d", "tiny-random", "0123456789abcdef")
    with pytest.raises(SelfspecError, match="tokenizer 0123456789abcdef"):
        load_drafter(tmp_path / "d", target=target, tokenizer=tok)
    with pytest.raises(SelfspecError, match="tokenizer"):  # found through the target's own folder
        load_drafter(tmp_path / "d", target=target)


def test_wrong_type_and_bad_folders(tiny_target, tmp_path):
    target, tok = tiny_target
    _save(make_drafter("medusa", target), tmp_path / "d", tok)
    with pytest.raises(SelfspecError, match="holds a 'medusa' drafter, expected 'eagle3'"):
        load_drafter(tmp_path / "d", expected_type="eagle3")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["selfspec"]["drafter_type"] = "hydra"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SelfspecError, match="unknown drafter type 'hydra'"):
        load_drafter(tmp_path / "d")
    with pytest.raises(SelfspecError, match="does not exist"):
        load_drafter(tmp_path / "nowhere")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text("{}")
    with pytest.raises(SelfspecError, match="not a selfspec drafter"):
        load_drafter(tmp_path / "e")


def test_eagle3_corrupt_vocab_map_refused(tiny_target, tmp_path):
    from safetensors.torch import load_file, save_file

    target, tok = tiny_target
    _save(make_drafter("eagle3", target), tmp_path / "d", tok)
    weights = tmp_path / "d" / "model.safetensors"
    state = load_file(str(weights))
    state["d2t"] = state["d2t"] + 1  # shifted map: every draft id points at the wrong target token
    save_file(state, str(weights))
    with pytest.raises(SelfspecError, match="d2t"):
        load_drafter(tmp_path / "d", target=target, tokenizer=tok)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_draft_model_folder_is_plain_transformers(tiny_target, input_ids, tmp_path, lora_r):
    target, tok = tiny_target
    d = build_drafter({"type": "draft_model", "num_layers": 2, "lora": {"r": lora_r}}, target)
    if lora_r:
        trainable = [n for n, p in d.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
    randomise(d)  # also moves LoRA B away from zero, so merging matters
    want = d(input_ids)
    _save(d, tmp_path / "d", tok)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "d").eval()
    assert hf.config.num_hidden_layers == 2
    torch.testing.assert_close(hf(input_ids).logits, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        load_drafter(tmp_path / "d", target=target)(input_ids), want, rtol=1e-5, atol=1e-5
    )


def test_draft_model_initialised_from_target_layers(tiny_target):
    target, _ = tiny_target
    d = build_drafter({"type": "draft_model", "num_layers": 2}, target)
    src, dst = target.state_dict(), d.model.state_dict()
    for name in (
        "model.embed_tokens.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ):
        torch.testing.assert_close(dst[name], src[name])
        assert dst[name].data_ptr() != src[name].data_ptr()  # a copy, trained on its own
