"""The rows of a bench: which methods run for which drafters, each as a generate function.

One row per method and drafter: ``target`` and ``prompt_lookup`` once, ``assisted:<label>`` for each draft-model
drafter (transformers' assisted generation needs a standalone causal LM), ``selfspec:<label>`` for each drafter,
and where asked ``vllm`` and ``vllm+drafter:<label>`` (``vllm_rows.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from selfspec.decode.bench.baselines import hf_generate_fn, selfspec_generate_fn
from selfspec.utils import SelfspecError

METHODS = ("target", "prompt_lookup", "assisted", "selfspec", "vllm", "vllm+drafter")
DEFAULT_METHODS = METHODS[:4]  # the vLLM rows only when asked (vLLM lives in its own venv)


# ---------------------------------------------------------------------------------------------------------
# Drafters: a Drafter object or a folder; a label for each; the transformers model inside a draft model.


def drafter_type_of(drafter: Any) -> str:
    """``medusa`` / ``eagle`` / ``eagle3`` / ``draft_model`` of a Drafter object or a drafter folder."""
    if isinstance(drafter, (str, Path)):
        cfg_path = Path(drafter) / "config.json"
        if not cfg_path.is_file():
            raise SelfspecError(
                f"{str(drafter)!r} is not a drafter folder (no config.json): pass a trained drafter"
            )
        cfg = json.loads(cfg_path.read_text())
        meta = cfg.get("selfspec")  # heads' save_drafter writes {"selfspec": {"drafter_type": ...}}
        if isinstance(meta, dict) and isinstance(meta.get("drafter_type"), str):
            return meta["drafter_type"]
        # A plain transformers model folder is a draft model (transformers can use it as an assistant too).
        return "draft_model" if "model_type" in cfg else "unknown"
    return str(getattr(drafter, "drafter_type", "") or getattr(drafter.config, "drafter_type", "unknown"))


def labelled(drafters: Any) -> dict[str, Any]:
    """``{label: drafter}``; labels are the drafter types, numbered when a type repeats."""
    if isinstance(drafters, Mapping):
        return dict(drafters)
    if drafters is None:
        return {}
    items = list(drafters) if isinstance(drafters, (list, tuple)) else [drafters]
    out: dict[str, Any] = {}
    for d in items:
        label = base = drafter_type_of(d)
        n = 2
        while label in out:
            label, n = f"{base}-{n}", n + 1
        out[label] = d
    return out


def assistant_of(drafter: Any, target: PreTrainedModel) -> PreTrainedModel:
    """The plain transformers causal LM of a draft-model drafter, for ``generate(assistant_model=...)``."""
    if isinstance(drafter, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(str(drafter), dtype=target.dtype)
        return model.to(target.device).eval()
    for module in drafter.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise SelfspecError(
        "this draft_model drafter wraps no transformers model: cannot run assisted generation"
    )


def build_methods(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    drafters: dict[str, Any],
    methods: Sequence[str],
    decoder_options: Mapping[str, Any],
    prompt_lookup_num_tokens: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``{row name: {kind, fn, ...}}`` and ``{row name: why skipped}``."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SelfspecError(f"unknown bench methods {sorted(unknown)}: choose from {list(METHODS)}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    rows["target"] = {"kind": "target", "method": "target", "fn": hf_generate_fn(target, pad)}
    if "prompt_lookup" in methods:
        rows["prompt_lookup"] = {
            "kind": "hf_speculative",
            "method": "prompt_lookup",
            "fn": hf_generate_fn(target, pad, prompt_lookup_num_tokens=prompt_lookup_num_tokens),
        }
    for label, drafter in drafters.items():
        family = drafter_type_of(drafter)
        src = str(drafter) if isinstance(drafter, (str, Path)) else None
        if "assisted" in methods:
            if family == "draft_model":
                rows[f"assisted:{label}"] = {
                    "kind": "hf_speculative",
                    "method": "assisted",
                    "drafter_type": family,
                    "drafter_path": src,
                    "fn": hf_generate_fn(target, pad, assistant_model=assistant_of(drafter, target)),
                }
            else:
                skipped[f"assisted:{label}"] = (
                    f"{family} is not a standalone causal LM (assisted generation needs a draft_model)"
                )
        if "selfspec" in methods:
            from selfspec.decode import SpeculativeDecoder
            from selfspec.heads import load_drafter

            module = load_drafter(str(drafter), target) if src else drafter
            dec = SpeculativeDecoder(target, module, **dict(decoder_options))
            rows[f"selfspec:{label}"] = {
                "kind": "selfspec",
                "method": "selfspec",
                "drafter_type": family,
                "drafter_path": src,
                "fn": selfspec_generate_fn(dec),
                "decoder": dec,
            }
    from selfspec.decode.bench.vllm_rows import vllm_rows

    more, why = vllm_rows(target, drafters, methods, decoder_options.get("depth"))
    rows.update(more)
    skipped.update(why)
    order = {m: i for i, m in enumerate(METHODS)}
    return dict(sorted(rows.items(), key=lambda kv: order[kv[1]["method"]])), skipped
