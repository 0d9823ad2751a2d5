"""Does a drafter fit a target? One clear error naming both sides when it does not."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from selfspec.heads.base import Drafter
from selfspec.heads.vocab import DraftVocab, validate_vocab_map
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)


# Weight names only one family has (native selfspec names and the engine layouts), to name a folder's real family.
_SIGNATURES = (
    ("dflash", ("hidden_norm.weight", "layers.0.self_attn.q_norm.weight")),
    ("eagle3", ("midlayer.hidden_norm.weight",)),
    ("eagle3", ("layers.0.hidden_norm.weight",)),
    ("eagle", ("layer.self_attn.q_proj.weight",)),
    ("medusa", ("heads.0.0.linear.weight",)),
)


def family_of_weights(keys: Any) -> str | None:
    """The drafter family whose weight names ``keys`` carry, or None when no signature matches."""
    names = set(keys)
    for family, needed in _SIGNATURES:
        if all(n in names for n in needed):
            return family
    return None


def check_family(keys: Any, claimed: str, source: Path | str) -> None:
    """Refuse a folder whose config names one family while its weights are another's (a renamed folder)."""
    found = family_of_weights(keys)
    if found is not None and found != claimed:
        raise SelfspecError(
            f"{source}: config.json says {claimed!r} but the weights are a {found} drafter's (a folder of "
            f"another family renamed?): load it as {found}, or train a {claimed} drafter"
        )


def _target_tokenizer_fingerprint(target: nn.Module, tokenizer: Any) -> str | None:
    """The target's tokenizer fingerprint: from ``tokenizer``, else from the target's own folder if it has one."""
    from selfspec.target import tokenizer_fingerprint

    if tokenizer is None:
        src = getattr(target, "name_or_path", "") or getattr(target.config, "_name_or_path", "")
        if not src or not Path(src).is_dir():
            return None
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(src)
        except (OSError, ValueError):
            return None
    return tokenizer_fingerprint(tokenizer)


def check_target(
    drafter: Drafter, target: nn.Module, tokenizer: Any, meta: dict[str, Any] | None, source: Path | str
) -> None:
    """Raise SelfspecError if ``drafter`` (loaded from ``source``) was trained for another target."""
    c = drafter.config
    tcfg = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    arch = (getattr(target.config, "architectures", None) or [type(target).__name__])[0]
    mine = {
        "vocab": c.vocab_size,
        "hidden": c.hidden_size,
        "architecture": c.target_architecture,
    }
    theirs = {
        "vocab": int(target.get_output_embeddings().weight.shape[0]),
        "hidden": int(tcfg.hidden_size),
        "architecture": arch,
    }
    saved_fp = ((meta or {}).get("target") or {}).get("tokenizer_fingerprint") or ""
    if saved_fp:
        fp = _target_tokenizer_fingerprint(target, tokenizer)
        if fp is not None:
            mine["tokenizer"], theirs["tokenizer"] = saved_fp, fp
        else:
            logger.warning("could not load the target's tokenizer: tokenizer fingerprint not checked")
    diff = [k for k in mine if mine[k] and mine[k] != theirs[k]]
    if diff:
        trained_for = ((meta or {}).get("target") or {}).get("name_or_path", "?")
        given = getattr(target, "name_or_path", "") or type(target).__name__
        left = ", ".join(f"{k} {mine[k]}" for k in diff)
        right = ", ".join(f"{k} {theirs[k]}" for k in diff)
        raise SelfspecError(
            f"drafter {source} was trained for target {trained_for!r} ({left}) but the given target "
            f"{given!r} has {right}: load it with the target it was trained for"
        )
    if isinstance(drafter, DraftVocab):
        validate_vocab_map(drafter.d2t, drafter.t2d, theirs["vocab"])
