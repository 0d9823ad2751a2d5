"""Export a trained drafter to ``output_dir/drafter/`` and optionally publish it on the Hugging Face hub.

The folder is ``selfspec.heads.save_drafter``'s (config.json + model.safetensors, or a plain transformers
folder for a draft model) plus ``train_config.yaml`` (the resolved training config, with ``dataset_dir`` so
decode/bench finds the eval split) and a model card ``README.md``. Under ZeRO-3 the weights are gathered from
the shards first; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import OmegaConf

from selfspec.heads import save_drafter
from selfspec.train.loop import metric_label
from selfspec.train.parallel import barrier
from selfspec.utils import SelfspecError, atomic_write_text

logger = logging.getLogger(__name__)

_LOAD_SNIPPET = """```python
from selfspec.heads import load_drafter
from selfspec.target import load_target

target, tokenizer = load_target("{target}")
drafter = load_drafter("{path}", target=target)
```"""


def model_card(
    drafter: Any, target_name: str, data_summary: str, metrics: dict[str, float], path: Path
) -> str:
    """A short README.md: what the drafter is, for which target, on what data, how good, how to load it."""
    label = metric_label(drafter.drafter_type)
    rows = [
        f"| {k} | {v:.4g} |"
        for k, v in sorted(metrics.items())
        if k.startswith(("eval/top1", "eval_untrained/top1", "train/"))
    ]
    table = "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "(no metrics recorded)"
    extra = ""
    if drafter.drafter_type == "draft_model":
        extra = (
            "\nThis folder is also a plain transformers model: `AutoModelForCausalLM.from_pretrained(path)` "
            "loads it, e.g. as `assistant_model` for transformers' assisted generation.\n"
        )
    return f"""---
library_name: selfspec
tags: [speculative-decoding, {drafter.drafter_type}]
---
# {drafter.drafter_type} drafter for {target_name}

A speculative-decoding drafter ({drafter.drafter_type}) trained by selfspec on the frozen target's own outputs
(self-distillation), so decoding with it is lossless and only faster.

- target: `{target_name}`
- training data: {data_summary}
- top-1 agreement with the target ({label} k predicts the k-th token after the target's own next token):

{table}
{extra}
## Load it

{_LOAD_SNIPPET.format(target=target_name, path=path)}

Then decode speculatively with `selfspec.decode`, or benchmark it: `python decode/bench/run.py drafter={path}`.
"""


@contextlib.contextmanager
def _full_weights(engine: Any):
    """Gather ZeRO-3 shards for the duration of the block (every rank must enter); a no-op otherwise."""
    if int(engine.zero_optimization_stage()) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def export_drafter(
    engine: Any,
    drafter: Any,
    cfg: Any,
    tokenizer_fp: str,
    dataset_dir: Path,
    data_summary: str,
    metrics: dict[str, float],
) -> Path:
    """Write ``output_dir/drafter`` (collective; rank 0 writes) and return its path."""
    out = Path(cfg.output_dir) / "drafter"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["dataset_dir"] = str(dataset_dir)
    resolved["metrics"] = metrics
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    with _full_weights(engine):
        if rank0:
            save_drafter(
                drafter,
                out,
                target_name_or_path=str(cfg.target.name_or_path),
                tokenizer_fingerprint=tokenizer_fp,
                extra_files={
                    "train_config.yaml": OmegaConf.to_yaml(OmegaConf.create(resolved)),
                    "README.md": model_card(
                        drafter, str(cfg.target.name_or_path), data_summary, metrics, out
                    ),
                },
            )
    barrier()
    logger.info("drafter exported to %s", out)
    return out


def add_measured_acceptance(folder: Path, report: dict[str, Any]) -> None:
    """Append the acceptance report's figures to the model card: tau (mean accepted tokens per target forward),
    tokens/s and the speed-up of every method, on the held-out prompts the report ran."""
    from selfspec.decode.bench.render import tau_cell

    s, card = report["settings"], folder / "README.md"
    rows = [
        f"| {m['name']} | {tau_cell(m)} | {m['tokens_per_s']:.1f} | "
        f"{(m['speedup'] or 0):.2f}x | {'yes' if m['identical'] else 'NO'} |"
        for m in report["methods"]
    ]
    text = "\n".join(
        [
            "",
            "## Measured acceptance",
            "",
            f"{s['num_prompts']} held-out prompts of the eval split, {s['max_new_tokens']} new tokens, batch 1, "
            f"{report['target']['device']} ({s['threads']} threads); tau = new tokens per target forward.",
            "",
            "| method | tau | tokens/s | speed-up | identical to greedy |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    atomic_write_text(card, card.read_text() + text)


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Publish ``folder`` as the model repo ``repo_id``; one clear error when the hub cannot be reached."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="selfspec drafter"
        )
    except Exception as e:  # noqa: BLE001 - network, auth and offline mode all end in the same advice
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SelfspecError(
            f"could not push {folder} to the hub repo {repo_id!r} ({why}); check the network and your token "
            "(`huggingface-cli login` or HF_TOKEN), or push later with huggingface_hub.upload_folder"
        ) from e
    logger.info("pushed %s to %s", folder, getattr(info, "commit_url", repo_id))
    return repo_id
