"""Drafter folders: ``save_drafter`` writes one atomically, ``load_drafter`` rebuilds any drafter from one.

A folder holds ``config.json`` and ``model.safetensors`` (drafter weights only; the bound target parts are
never saved) plus extra files (the training config, the model card). ``config.json`` always carries a
``"selfspec"`` object: drafter type, its hyper-parameters (``head``), the target's name, architecture, sizes
and tokenizer fingerprint, and the selfspec version. A ``draft_model`` folder is additionally a plain
transformers folder: its ``config.json`` is the model's own config with the ``"selfspec"`` key added.

Third-party layouts (speculators, SGLang, Medusa, EAGLE-1) are read by ``selfspec.heads.formats``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from selfspec.faults import maybe_die
from selfspec.heads.base import Drafter
from selfspec.heads.draft_model import DraftModel
from selfspec.heads.registry import CONFIGS, config_from_dict, drafter_class
from selfspec.utils import SelfspecError, atomic_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ACCEPTANCE = "acceptance.json"  # p[d][r] for the decoder's tree planner (selfspec.train.acceptance)


def _version() -> str:
    from selfspec import __version__

    return __version__


def drafter_metadata(
    drafter: Drafter, target_name_or_path: str, tokenizer_fingerprint: str
) -> dict[str, Any]:
    """The ``"selfspec"`` object of config.json."""
    c = drafter.config
    return {
        "format_version": FORMAT_VERSION,
        "selfspec_version": _version(),
        "drafter_type": drafter.drafter_type,
        "head": dataclasses.asdict(c),
        "target": {
            "name_or_path": target_name_or_path,
            "architecture": c.target_architecture,
            "hidden_size": c.hidden_size,
            "vocab_size": c.vocab_size,
            "num_layers": c.num_target_layers,
            "tokenizer_fingerprint": tokenizer_fingerprint,
        },
    }


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tensors sharing storage are cloned so safetensors accepts them."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        t = v.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.device.type != "meta" else (id(t), 0)
        out[k] = t.clone().contiguous().cpu() if key in seen else t.contiguous().cpu()
        seen.add(key)
    return out


def save_drafter(
    drafter: Drafter,
    path: str | Path,
    target_name_or_path: str,
    tokenizer_fingerprint: str,
    extra_files: dict[str, str] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the drafter folder atomically (a reader never sees half of it); returns its path.

    ``state_dict``: weights to save instead of ``drafter.state_dict()`` (e.g. gathered from ZeRO-3 shards).
    """
    meta = drafter_metadata(drafter, target_name_or_path, tokenizer_fingerprint)
    with atomic_dir(path) as tmp:
        if isinstance(drafter, DraftModel):
            if state_dict is not None:
                drafter.load_state_dict(state_dict)
            model = drafter.export_model()
            model.save_pretrained(tmp)
            maybe_die("export_between_files")
            cfg = json.loads((tmp / CONFIG).read_text())
            cfg["selfspec"] = meta
            (tmp / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        else:
            state = state_dict if state_dict is not None else drafter.state_dict()
            metadata = {"format": "pt", **drafter.weights_metadata()}
            save_file(_unshared(state), str(tmp / WEIGHTS), metadata=metadata)
            maybe_die("export_between_files")
            (tmp / CONFIG).write_text(json.dumps({"selfspec": meta}, indent=2, sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        if getattr(drafter, "acceptance", None):
            (tmp / ACCEPTANCE).write_text(json.dumps(drafter.acceptance, indent=1) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------------------------------------
# Loading.


def resolve_drafter_path(path_or_id: str | Path) -> Path:
    """A local folder as is; anything else is taken as a hub id and downloaded (cached) by huggingface_hub."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    s = str(path_or_id)
    if p.exists() or s.startswith(("/", ".", "~")) or s.count("/") != 1:
        raise SelfspecError(f"drafter folder {s!r} does not exist: give a drafter folder or a hub repo id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s))
    except Exception as e:  # noqa: BLE001 - hub errors are many; report the first line
        raise SelfspecError(
            f"could not download drafter {s!r} from the hub ({str(e).splitlines()[0]})"
        ) from e


def detect_format(folder: Path) -> str:
    """Name of the layout of a drafter folder: ``selfspec`` or a third-party format (formats.py)."""
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise SelfspecError(f"{folder} has no {CONFIG}: not a drafter folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SelfspecError(f"{cfg_path} is not valid JSON ({e})") from e
    if isinstance(cfg.get("selfspec"), dict):
        return "selfspec"
    from selfspec.heads.formats import detect

    fmt = detect(folder, cfg)
    if fmt is None:
        raise SelfspecError(
            f"{folder} is not a selfspec drafter folder (no 'selfspec' key in {CONFIG}) "
            "and matches no known third-party format (speculators, sglang, medusa, eagle1)"
        )
    return fmt


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``"selfspec"`` object of a selfspec drafter folder's config.json (a folder or a hub id)."""
    folder = resolve_drafter_path(path)
    if detect_format(folder) != "selfspec":
        raise SelfspecError(
            f"{folder} is a third-party drafter export, not a selfspec folder: load it with load_drafter"
        )
    return json.loads((folder / CONFIG).read_text())["selfspec"]


def load_drafter(
    path: str | Path,
    target: nn.Module | None = None,
    tokenizer: Any = None,
    expected_type: str | None = None,
) -> Drafter:
    """Rebuild a drafter from a folder or hub id, load its weights strictly and, given a target, check it
    matches (vocab, hidden size, architecture, tokenizer fingerprint), bind it and move to its device/dtype."""
    folder = resolve_drafter_path(path)
    fmt = detect_format(folder)
    if fmt != "selfspec":
        from selfspec.heads.format_import import bind_checked, read_external

        drafter = read_external(folder, json.loads((folder / CONFIG).read_text()), target)
        _check_type(drafter, expected_type, folder)
        return bind_checked(drafter, target, tokenizer, folder) if target is not None else drafter.eval()
    meta = json.loads((folder / CONFIG).read_text())["selfspec"]
    drafter = _read_native(folder, meta)
    _check_type(drafter, expected_type, folder)
    drafter.acceptance = _read_acceptance(folder)
    if target is not None:
        from selfspec.heads.checks import check_target

        check_target(drafter, target, tokenizer, meta, folder)
        weight = target.get_output_embeddings().weight
        drafter.to(device=weight.device, dtype=weight.dtype).bind(target)
    return drafter.eval()


def _read_acceptance(folder: Path) -> dict[str, Any] | None:
    """The folder's acceptance statistics, or None (and a warning) when absent or unreadable."""
    path = folder / ACCEPTANCE
    if not path.is_file():
        return None
    try:
        stats = json.loads(path.read_text())
        p = stats["p"]
        if not (isinstance(p, list) and p and all(isinstance(r, list) and r for r in p)):
            raise ValueError("no p[depth][rank] table")
        if not all(0.0 <= float(x) <= 1.0 for r in p for x in r):
            raise ValueError("probabilities outside [0, 1]")
    except (ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring %s (%s): the decoder will use its default tree", path, e)
        return None
    return stats


def _check_type(drafter: Drafter, expected_type: str | None, folder: Path) -> None:
    if expected_type is not None and drafter.drafter_type != expected_type:
        raise SelfspecError(f"{folder} holds a {drafter.drafter_type!r} drafter, expected {expected_type!r}")


def _read_native(folder: Path, meta: dict[str, Any]) -> Drafter:
    from selfspec.heads.checks import check_family

    drafter_type = meta.get("drafter_type", "")
    cls = drafter_class(drafter_type)
    weights = folder / WEIGHTS
    if cls is not DraftModel:
        if not weights.is_file():
            raise SelfspecError(f"{folder} has no {WEIGHTS}: the drafter export is incomplete")
        with safe_open(str(weights), "pt") as f:
            check_family(f.keys(), drafter_type, folder)
            metadata = f.metadata() or {}
    config = config_from_dict(CONFIGS[drafter_type], meta.get("head", {}))
    if cls is DraftModel:
        return _read_draft_model(folder, config)
    drafter = cls(config)
    drafter.check_weights_metadata(metadata, folder)
    state = load_file(str(weights))
    missing, unexpected = drafter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SelfspecError(
            f"{weights} does not fit a {drafter_type} drafter with the saved config "
            f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})"
        )
    return drafter


def _read_draft_model(folder: Path, config: Any) -> DraftModel:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, dtype=torch.float32)
    bad = [
        k for k in info.get("missing_keys", []) if "lm_head" not in k or not model.config.tie_word_embeddings
    ]
    if bad or info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise SelfspecError(
            f"{folder} weights do not fit its config (missing {sorted(bad)[:4]}, "
            f"unexpected {sorted(info.get('unexpected_keys', []))[:4]})"
        )
    if config.lora.r > 0:
        logger.info("draft model %s: LoRA adapters were merged on export; loaded without adapters", folder)
        config.lora.r = 0
    return DraftModel(config, model)
