"""From a ``bench`` config to a report: what a drafter folder says about its target and its dataset.

A drafter folder (heads' ``save_drafter``) holds ``config.json`` (the drafter type and the target it was trained
for) and, from train/, the resolved training config, which records the dataset folder; a folder holding only a
plain transformers model counts as a draft model (usable by transformers' assisted generation too).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from selfspec.decode.bench.prompts import load_prompts_file, prompts_from_dataset_dir
from selfspec.decode.bench.report import run_report
from selfspec.target import load_target
from selfspec.utils import SelfspecError, seed_everything

logger = logging.getLogger("selfspec.decode.bench")

_TARGET_KEYS = ("target_name_or_path", "target", "name_or_path")
_DATASET_KEYS = ("dataset_dir", "dataset_path", "dataset")


def _drafter_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise SelfspecError(f"{str(path)!r} is not a drafter folder (no config.json): pass a trained drafter")
    return json.loads(cfg_path.read_text())


def _find_key(obj: Any, keys: tuple[str, ...]) -> str | None:
    """The first string value under one of ``keys``, searched breadth-first through nested dicts."""
    queue = [obj]
    while queue:
        node = queue.pop(0)
        if not isinstance(node, dict):
            continue
        for k in keys:
            v = node.get(k)
            if isinstance(v, str) and v:
                return v
            if isinstance(v, dict) and isinstance(v.get("name_or_path"), str):
                return v["name_or_path"]
        queue.extend(v for v in node.values() if isinstance(v, dict))
    return None


def target_of_drafter(path: str | Path) -> str:
    """The target a drafter folder was trained for (``config.json["selfspec"]["target"]["name_or_path"]``)."""
    meta = _drafter_config(Path(path)).get("selfspec")
    name = _find_key(meta, _TARGET_KEYS) if isinstance(meta, dict) else None
    if name is None:
        raise SelfspecError(f"drafter {str(path)!r} does not name its target: pass target.name_or_path=...")
    return name


def dataset_of_drafter(path: str | Path) -> str:
    """The data-step dataset folder recorded with a drafter: its config.json, or a training config YAML in the
    drafter folder or the run folder above it."""
    path = Path(path)
    found = _find_key(_drafter_config(path), _DATASET_KEYS)
    for folder in (path, path.parent):
        for yml in sorted(folder.glob("*.yaml")) if found is None else []:
            try:
                found = _find_key(yaml.safe_load(yml.read_text()), _DATASET_KEYS)
            except yaml.YAMLError:
                continue
            if found:
                break
    if not found:
        raise SelfspecError(f"drafter {str(path)!r} records no dataset: pass dataset=DIR or prompts=FILE")
    return found


def bench_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Load the target and the prompts a ``bench`` config names, and run the report."""
    seed_everything(cfg.seed)
    drafters = cfg.drafter if isinstance(cfg.drafter, str) else list(cfg.drafter)
    paths = [Path(d) for d in ([drafters] if isinstance(drafters, str) else drafters)]
    if not paths:
        raise SelfspecError("drafter=[] is empty: pass drafter=PATH or drafter=[P1,P2]")
    for p in paths:
        _drafter_config(p)
    target_name = cfg.target.name_or_path or target_of_drafter(paths[0])
    logger.info("target %s, drafters %s", target_name, ", ".join(map(str, paths)))
    source = str(cfg.prompts) if cfg.prompts else (cfg.dataset or dataset_of_drafter(paths[0]))
    target, tokenizer = load_target(
        target_name,
        device=cfg.device,
        dtype=cfg.target.dtype,
        attn_implementation=cfg.target.attn_implementation,
    )
    if cfg.prompts:
        prompts = load_prompts_file(cfg.prompts, tokenizer, cfg.num_prompts)
    else:
        prompts = prompts_from_dataset_dir(source, cfg.num_prompts)
    logger.info("%d prompts from %s", len(prompts), source)
    return run_report(
        target,
        tokenizer,
        [str(p) for p in paths],
        prompts,
        cfg.output_dir,
        max_new_tokens=cfg.max_new_tokens,
        num_prompts=cfg.num_prompts,
        methods=list(cfg.methods),
        warmup=cfg.warmup,
        decoder_options={
            k: v for k, v in OmegaConf.to_container(cfg.decode, resolve=True).items() if v is not None
        },
        prompt_lookup_num_tokens=cfg.prompt_lookup_num_tokens,
        extra={"prompts": source},
        fp32_prompts=cfg.fp32_prompts,
    )
