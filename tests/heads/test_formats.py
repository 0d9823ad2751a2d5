"""Export -> import round trips on the tiny target, and corrupted exports refused with one clear line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from selfspec.heads import build_drafter, load_drafter
from selfspec.heads.eagle3 import Eagle3
from selfspec.heads.format_export import export
from selfspec.heads.format_import import import_drafter
from selfspec.heads.formats import SIDECAR
from selfspec.utils import SelfspecError

TARGET = "tiny-random"


@pytest.fixture(scope="module")
def drafters(tiny_target):
    model, _ = tiny_target
    torch.manual_seed(0)
    counts = torch.rand(model.config.vocab_size)
    eagle3 = build_drafter({"type": "eagle3", "draft_vocab_size": 64, "aux_layers": [1, 2, 3]}, model, counts)
    medusa = build_drafter({"type": "medusa", "num_heads": 3, "num_layers": 2}, model)
    medusa_own = build_drafter({"type": "medusa", "num_heads": 2, "own_lm_head": True}, model)
    eagle = build_drafter({"type": "eagle"}, model)
    dflash = build_drafter(
        {"type": "dflash", "draft_vocab_size": 64, "block_size": 4, "num_layers": 2}, model, counts
    )
    dflash_full = build_drafter(
        {"type": "dflash", "draft_vocab_size": 0, "block_size": 3, "num_layers": 1}, model
    )
    for d in (
        eagle3,
        medusa,
        medusa_own,
        eagle,
        dflash,
    ):  # random weights: zero-initialised blocks would hide mistakes
        with torch.no_grad():
            for p in d.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return {
        "eagle3": eagle3,
        "medusa": medusa,
        "medusa_own": medusa_own,
        "eagle": eagle,
        "dflash": dflash,
        "dflash_full": dflash_full,  # full vocabulary: the export leaves lm_head (the target's) to the engine
    }


def _outputs(drafter, model):
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    pos = torch.arange(7).expand(2, 7)
    h = model.config.hidden_size
    if drafter.drafter_type == "medusa":
        return drafter(torch.randn(2, 7, h))
    if drafter.drafter_type == "dflash":
        ctx = drafter.fuse(torch.randn(2, 7, len(drafter.feature_layers()) * h))
        logits = drafter.forward_anchors(ctx, ids, torch.tensor([[0, 3], [2, 6]]))
        return torch.cat([logits.flatten(), drafter.draft_to_target(logits.argmax(-1)).flatten().float()])
    if drafter.drafter_type == "eagle3":
        out = drafter(drafter.fuse(torch.randn(2, 7, 3 * h)), ids, pos)
        return torch.cat(
            [out[0].flatten(), out[1].flatten(), drafter.draft_to_target(out[1].argmax(-1)).flatten()]
        )
    out = drafter(torch.randn(2, 7, h), ids, pos)
    return torch.cat([out[0].flatten(), out[1].flatten()])


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("eagle3", "speculators"),
        ("eagle3", "sglang"),
        ("medusa", "medusa"),
        ("medusa_own", "medusa"),
        ("eagle", "eagle1"),
        ("dflash", "speculators"),
        ("dflash_full", "speculators"),
    ],
)
def test_round_trip(drafters, tiny_target, tmp_path, name, fmt):
    model, tok = tiny_target
    drafter = drafters[name]
    out = export(drafter, fmt, tmp_path / fmt, target_name_or_path=TARGET)
    back = import_drafter(out, target=model, tokenizer=tok)
    assert type(back) is type(drafter)
    torch.testing.assert_close(_outputs(back, model), _outputs(drafter, model), rtol=0, atol=1e-6)
    again = load_drafter(out, target=model)  # load_drafter reads third-party layouts too
    torch.testing.assert_close(_outputs(again, model), _outputs(drafter, model), rtol=0, atol=1e-6)


def test_layouts(drafters, tmp_path):
    e3 = drafters["eagle3"]
    spec = export(e3, "speculators", tmp_path / "s", target_name_or_path=TARGET)
    cfg = json.loads((spec / "config.json").read_text())
    assert cfg["speculators_model_type"] == "eagle3" and cfg["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    assert cfg["speculators_config"]["verifier"]["name_or_path"]
    keys = load_file(str(spec / "model.safetensors")).keys()
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d", "layers.0.hidden_norm.weight"} <= set(
        keys
    )
    sg = export(e3, "sglang", tmp_path / "g", target_name_or_path=TARGET)
    cfg = json.loads((sg / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]  # SGLang captures id + 1
    assert "midlayer.self_attn.q_proj.weight" in load_file(str(sg / "model.safetensors"))
    med = export(drafters["medusa"], "medusa", tmp_path / "m", target_name_or_path=TARGET)
    state = load_file(str(med / "medusa_lm_head.safetensors"))
    assert {"0.0.linear.weight", "0.1.linear.bias", "2.2.weight"} <= set(state)
    assert json.loads((med / "config.json").read_text())["medusa_num_heads"] == 3


def _corrupt(folder, fn):
    state = load_file(str(folder / "model.safetensors"))
    fn(state)
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize("fmt", ["speculators", "sglang"])
def test_corrupt_eagle3_refused(drafters, tiny_target, tmp_path, fmt):
    model, _ = tiny_target
    e3 = drafters["eagle3"]
    shifted = export(e3, fmt, tmp_path / "shift", target_name_or_path=TARGET)
    _corrupt(shifted, lambda s: s.__setitem__("d2t", s["d2t"] + 1))
    with pytest.raises(SelfspecError, match="d2t") as e:
        import_drafter(shifted, target=model)
    assert "\n" not in str(e.value)

    wrong_v = export(e3, fmt, tmp_path / "vocab", target_name_or_path=TARGET)
    cfg_path = wrong_v / "config.json"
    cfg = json.loads(cfg_path.read_text())
    (cfg.get("transformer_layer_config") or cfg)["vocab_size"] = 300
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(SelfspecError, match="vocab") as e:
        import_drafter(wrong_v, target=model)
    assert "\n" not in str(e.value)

    deep = export(e3, fmt, tmp_path / "deep", target_name_or_path=TARGET)
    cfg = json.loads((deep / "config.json").read_text())
    if fmt == "speculators":
        cfg["eagle_aux_hidden_state_layer_ids"] = [1, 2, 9]
    else:
        cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [0, 1, 8]
    (deep / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SelfspecError, match="aux layers") as e:
        import_drafter(deep, target=model)
    assert "\n" not in str(e.value)


def test_export_refuses_inconsistent(drafters, tiny_target, tmp_path):
    model, _ = tiny_target
    e3 = drafters["eagle3"]
    d2t = e3.d2t.clone()
    try:
        e3.d2t.add_(1)
        with pytest.raises(SelfspecError, match="d2t"):
            export(e3, "speculators", tmp_path / "x", target=model, target_name_or_path=TARGET)
    finally:
        e3.d2t.copy_(d2t)
    assert not (tmp_path / "x").exists()  # nothing half-written
    with pytest.raises(SelfspecError, match="names no target"):
        export(e3, "speculators", tmp_path / "y")
    with pytest.raises(SelfspecError, match="holds medusa"):
        export(e3, "medusa", tmp_path / "z", target_name_or_path=TARGET)


def test_sglang_default_ids_resolved_from_target(tiny_target, tmp_path, drafters):
    model, _ = tiny_target
    out = export(drafters["eagle3"], "sglang", tmp_path / "g", target_name_or_path=TARGET)
    (out / SIDECAR).unlink()
    cfg = json.loads((out / "config.json").read_text())
    del cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SelfspecError, match="target="):
        import_drafter(out)
    assert isinstance(import_drafter(out, target=model), Eagle3)


def test_dflash_layout_and_refusals(drafters, tiny_target, tmp_path):
    model, _ = tiny_target
    d = drafters["dflash"]
    out = export(d, "speculators", tmp_path / "s", target_name_or_path=TARGET)
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["speculators_model_type"] == "dflash" and cfg["block_size"] == 4 and not cfg["sample_from_anchor"]
    )
    assert (
        cfg["aux_hidden_state_layer_ids"] == d.feature_layers()
        and cfg["mask_token_id"] == d.config.mask_token_id
    )
    layer = cfg["transformer_layer_config"]
    assert layer["model_type"] == "qwen3" and layer["num_hidden_layers"] == 2 and layer["head_dim"] == 16
    assert cfg["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3
    keys = set(load_file(str(out / "model.safetensors")))
    assert {
        "fc.weight",
        "hidden_norm.weight",
        "lm_head.weight",
        "d2t",
        "t2d",
        "layers.1.self_attn.q_norm.weight",
    } <= keys
    # An EAGLE-3 export renamed to dflash, and a DSpark-style export: refused in one line.
    renamed = export(drafters["eagle3"], "speculators", tmp_path / "r", target_name_or_path=TARGET)
    cfg_e3 = json.loads((renamed / "config.json").read_text())
    cfg_e3.update(speculators_model_type="dflash", block_size=4, mask_token_id=0)
    (renamed / "config.json").write_text(json.dumps(cfg_e3))
    with pytest.raises(SelfspecError, match="weights are a eagle3 drafter's") as e:
        import_drafter(renamed, target=model)
    assert "\n" not in str(e.value)
    cfg["sample_from_anchor"] = True
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SelfspecError, match="sample_from_anchor"):
        import_drafter(out, target=model)
    with pytest.raises(SelfspecError, match="holds eagle3 or dflash drafters, not medusa"):
        export(drafters["medusa"], "speculators", tmp_path / "m", target_name_or_path=TARGET)
