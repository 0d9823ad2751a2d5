"""Real clients read selfspec's exports: ``speculators`` 0.9.0 and ``economize`` 0.3.2 in throw-away venvs.

Slow (venv creation + installs, minutes): skipped unless ``SELFSPEC_INTEROP=1``; run by ``scripts/interop_check.sh``.
``SELFSPEC_INTEROP_VENVS=DIR`` reuses venvs across runs (default: a fresh temporary folder).
``SELFSPEC_INTEROP_TRAINED=RUNS`` checks the drafters trained on the embedded target instead (``RUNS/eagle3/drafter``,
``RUNS/medusa/drafter`` and ``RUNS/dflash/drafter``, e.g. from ``make reproduce``); default: random drafters on the
tiny target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from selfspec.heads import build_drafter, load_drafter, save_drafter
from selfspec.heads.format_export import export
from selfspec.heads.format_import import import_drafter
from selfspec.target import (
    EMBEDDED_TARGET,
    TINY_TARGET,
    load_target,
    resolve_target_path,
    tokenizer_fingerprint,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(3600),  # the first test builds the client venvs (~9 min on 2 busy cores, each)
    pytest.mark.skipif(
        not os.environ.get("SELFSPEC_INTEROP"), reason="set SELFSPEC_INTEROP=1 (slow: builds venvs)"
    ),
]

HERE = Path(__file__).parent
SPECULATORS = [
    [
        "torch==2.13.0",
        "transformers==5.19.0",
        "safetensors",
        "pydantic",
        "pydantic-settings",
        "loguru",
        "huggingface-hub",
        "numpy",
        "tqdm",
        "openai",
        "datasets<=5.1.0",
        "hs-connectors==0.9.0",
    ],
    ["--no-deps", "speculators==0.9.0"],
]
ECONOMIZE = [["torch==2.13.0", "economize==0.3.2"]]
PROMPTS = ["Hello there, how are", "The capital of France", "1 2 3 4 5"]
TRAINED = os.environ.get("SELFSPEC_INTEROP_TRAINED")


@pytest.fixture(scope="module")
def interop_target(tiny_target):
    """``(name, model, tokenizer)``: the embedded target with trained drafters, else the tiny target."""
    if TRAINED:
        return (EMBEDDED_TARGET, *load_target(EMBEDDED_TARGET, device="cpu", dtype="fp32"))
    return (TINY_TARGET, *tiny_target)


def make_venv(name: str, installs: list[list[str]]) -> Path:
    """A venv (no system site-packages) with the given pip installs; reused when it already exists."""
    root = Path(os.environ.get("SELFSPEC_INTEROP_VENVS") or tempfile.mkdtemp(prefix="selfspec-interop-"))
    venv = root / name
    python = venv / "bin" / "python"
    if not (venv / ".done").exists():
        start = time.time()
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        for args in installs:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *args], check=True, timeout=1800)
        (venv / ".done").write_text(f"{time.time() - start:.0f}s\n")
    return python


def run_client(python: Path, script: str, *args: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [str(python), str(HERE / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def drafters(interop_target, tmp_path_factory):
    name, model, tok = interop_target
    root = tmp_path_factory.mktemp("interop")
    if TRAINED:
        native = {kind: Path(TRAINED) / kind / "drafter" for kind in ("eagle3", "medusa", "dflash")}
        e3, med, dfl = (load_drafter(native[k], model, tok) for k in ("eagle3", "medusa", "dflash"))
    else:
        torch.manual_seed(0)
        e3 = build_drafter(
            {"type": "eagle3", "draft_vocab_size": 128, "aux_layers": [1, 2, 3]},
            model,
            torch.rand(model.config.vocab_size),
        )
        med = build_drafter({"type": "medusa", "num_heads": 3}, model)
        dfl = build_drafter(
            {"type": "dflash", "draft_vocab_size": 128, "block_size": 4, "num_layers": 2},
            model,
            torch.rand(model.config.vocab_size),
        )
        for d in (e3, med, dfl):
            with torch.no_grad():
                for p in d.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
        fp = tokenizer_fingerprint(tok)
        native = {
            "eagle3": save_drafter(e3, root / "eagle3", name, fp),
            "medusa": save_drafter(med, root / "medusa", name, fp),
            "dflash": save_drafter(dfl, root / "dflash", name, fp),
        }
    exports = {
        fmt: export(native[kind], fmt, root / fmt, target=model)
        for fmt, kind in (("speculators", "eagle3"), ("sglang", "eagle3"), ("medusa", "medusa"))
    }
    exports["speculators-dflash"] = export(
        native["dflash"], "speculators", root / "speculators-dflash", target=model
    )
    return {"eagle3": e3, "medusa": med, "dflash": dfl, "native": native, "exports": exports, "root": root}


def test_speculators_loads_export_with_same_logits(drafters, interop_target):
    _, model, _ = interop_target
    python = make_venv("speculators", SPECULATORS)
    e3 = drafters["eagle3"]
    torch.manual_seed(3)
    h, t = model.config.hidden_size, 9
    inputs = {
        "aux": torch.randn(1, t, 3 * h),
        "input_ids": torch.randint(0, model.config.vocab_size, (1, t)),
        "position_ids": torch.arange(t)[None],
    }
    with torch.no_grad():
        _, ours = e3(e3.fuse(inputs["aux"]), inputs["input_ids"], inputs["position_ids"])
    root = drafters["root"]
    torch.save(inputs, root / "spec_in.pt")
    run_client(
        python,
        "speculators_client.py",
        drafters["exports"]["speculators"],
        root / "spec_in.pt",
        root / "spec_out.pt",
    )
    theirs = torch.load(root / "spec_out.pt")
    assert theirs["class"] == "Eagle3DraftModel" and theirs["aux_ids"] == e3.feature_layers()
    torch.testing.assert_close(theirs["logits"], ours, rtol=1e-4, atol=1e-5)
    assert torch.equal(theirs["draft_tokens"], ours.argmax(-1))


def test_speculators_loads_dflash_export_with_same_logits(drafters, interop_target):
    """speculators' own training forward (anchored blocks, its flex-attention mask built densely for sdpa) on the
    export gives selfspec's block logits; tolerance: fp32 rounding of two op orders (rtol 1e-4, atol 1e-5)."""
    _, model, _ = interop_target
    python = make_venv("speculators", SPECULATORS)
    dfl = drafters["dflash"]
    torch.manual_seed(3)
    h, t, k = model.config.hidden_size, 40, dfl.block_size
    inputs = {
        "aux": torch.randn(1, t, len(dfl.feature_layers()) * h),
        "input_ids": torch.randint(0, model.config.vocab_size, (1, t)),
        "anchors": torch.tensor([0, 3, 9, 17, t - k - 1]),  # speculators never anchors in the last block
    }
    with torch.no_grad():
        ours = dfl.forward_anchors(dfl.fuse(inputs["aux"]), inputs["input_ids"], inputs["anchors"][None])
    ours = ours.reshape(1, -1, ours.shape[-1])  # (1, N*K, Vd)
    root = drafters["root"]
    torch.save(inputs, root / "dflash_in.pt")
    out = root / "dflash_out.pt"
    run_client(
        python,
        "speculators_dflash_client.py",
        drafters["exports"]["speculators-dflash"],
        root / "dflash_in.pt",
        out,
    )
    theirs = torch.load(out)
    assert theirs["class"] == "DFlashDraftModel" and theirs["aux_ids"] == dfl.feature_layers()
    assert (theirs["block_size"], theirs["mask_token_id"]) == (k, dfl.config.mask_token_id)
    assert torch.equal(theirs["blocks"], (inputs["anchors"][:, None] + torch.arange(k)).reshape(-1))
    diff = (theirs["logits"] - ours).abs().max().item()
    print(f"speculators dflash logits: max abs diff {diff:.3g} (max |logit| {ours.abs().max().item():.3g})")
    torch.testing.assert_close(theirs["logits"], ours, rtol=1e-4, atol=1e-5)


def test_import_back_dflash_decodes_like_native(drafters, interop_target):
    _, model, tok = interop_target
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    native = import_drafter(drafters["native"]["dflash"], target=model, tokenizer=tok)
    back = import_drafter(drafters["exports"]["speculators-dflash"], target=model, tokenizer=tok)
    assert _selfspec_decode(model, back, prompts, 24, 3) == _selfspec_decode(model, native, prompts, 24, 3)


def _selfspec_decode(model, drafter, prompts, max_new, depth):
    from selfspec.decode import SpeculativeDecoder

    dec = SpeculativeDecoder(model, drafter, tree=False, depth=depth)
    if drafter.drafter_type == "medusa":
        dec = SpeculativeDecoder(model, drafter, tree=False)
    rows = []
    for p in prompts:
        res = dec.generate(torch.tensor([p]), max_new_tokens=max_new)
        rows.append((res.sequences[0, len(p) : len(p) + max_new].tolist(), res.stats.mean_accepted_tokens))
    return rows


@pytest.mark.parametrize("fmt", ["speculators", "sglang", "medusa"])
def test_economize_decodes_export_losslessly(drafters, interop_target, fmt):
    name, model, tok = interop_target
    python = make_venv("economize", ECONOMIZE)
    root, max_new, cycle = drafters["root"], 24, 4
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    (root / "prompts.json").write_text(json.dumps(prompts))
    out = root / f"eco_{fmt}.json"
    run_client(
        python,
        "economize_client.py",
        resolve_target_path(name),
        drafters["exports"][fmt],
        root / "prompts.json",
        max_new,
        cycle,
        out,
    )
    result = json.loads(out.read_text())
    kind = "medusa" if fmt == "medusa" else "eagle3"
    ours = _selfspec_decode(model, drafters[kind], prompts, max_new, cycle - 1)
    for row, (tokens, accepted) in zip(result["rows"], ours, strict=True):
        assert row["tokens"][:max_new] == row["plain"][:max_new]  # economize: lossless
        assert tokens[: len(row["plain"])] == row["plain"][: len(tokens)]  # selfspec: the same greedy output
        # economize counts accepted drafts per cycle, selfspec tokens per verification (bonus included).
        assert abs((row["mean_accepted"] + 1) - accepted) < 0.75, (fmt, row["mean_accepted"], accepted)


@pytest.mark.parametrize("fmt", ["speculators", "sglang", "medusa"])
def test_import_back_decodes_like_native(drafters, interop_target, fmt):
    _, model, tok = interop_target
    kind = "medusa" if fmt == "medusa" else "eagle3"
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    native = import_drafter(drafters["native"][kind], target=model, tokenizer=tok)
    back = import_drafter(drafters["exports"][fmt], target=model, tokenizer=tok)
    assert _selfspec_decode(model, back, prompts, 24, 3) == _selfspec_decode(model, native, prompts, 24, 3)
