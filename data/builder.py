"""Build, cache and resume a self-distilled dataset; see ``selfspec.data`` for the on-disk layout."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selfspec.data.engine_vllm import import_vllm
from selfspec.data.magpie import self_prompts
from selfspec.data.prompts import Conversation, collect, source_records
from selfspec.data.rollout import Rollout, Sampling, pad_id, stop_token_ids
from selfspec.faults import maybe_die
from selfspec.target import (
    load_target,
    resolve_target_path,
    selfspec_home,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from selfspec.utils import (
    SelfspecError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    resolve_device,
    resolve_dtype,
)

logger = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "loss_mask": datasets.Sequence(datasets.Value("int8")),
        "prompt_len": datasets.Value("int32"),
        "prompt_index": datasets.Value("int32"),
    }
)
COMPLETE = "COMPLETE"
_NOT_IN_KEY = ("cache_dir", "wait_timeout_s")  # location and patience, not content
# The engine settings that can change what is generated (the rest is parallelism, memory, location, patience).
_ENGINE_CONTENT = {"vllm": ("dtype", "max_model_len", "kwargs"), "openai": ("model",)}
ENGINES = ("hf", "vllm", "openai")


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def dataset_meta(
    cfg: DictConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> dict[str, Any]:
    """Everything that determines the dataset; its hash names the folder."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for k in (*_NOT_IN_KEY, *_throughput_only(data)):
        data.pop(k, None)
    engine, settings = (
        data.pop("engine", "hf"),
        {"vllm": data.pop("vllm", {}), "openai": data.pop("openai", {})},
    )
    if engine != "hf":  # hf datasets keep the keys they had before engines were selectable
        data["engine"] = {"name": engine, **{k: settings[engine].get(k) for k in _ENGINE_CONTENT[engine]}}
    if data["source"] != "self":
        data.pop("magpie")
    elif data["magpie"].get("avoid"):  # the avoided datasets by their folder names (each names its content)
        data["magpie"]["avoid"] = [p.name for p in _avoided_folders(data["magpie"]["avoid"])]
    else:
        data["magpie"].pop("avoid", None)  # datasets made before data.magpie.avoid keep their keys
    if (
        data["source"] in ("jsonl", "parquet")
        and data.get("path")
        and Path(data["path"]).expanduser().is_file()
    ):
        data["file_sha256"] = _file_digest(data["path"])
    return {
        "target": cfg.target.name_or_path,
        "weights_fingerprint": weights_fingerprint(model),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "data": data,
        "seed": int(cfg.seed),
    }


def _avoided_folders(paths: list[str]) -> list[Path]:
    folders = [Path(p).expanduser().resolve() for p in paths]
    for f in folders:
        if not (f / "prompts.json").is_file():
            raise SelfspecError(
                f"data.magpie.avoid: {f} is not a dataset folder (no prompts.json); give folders the data "
                "step wrote, e.g. under $SELFSPEC_HOME/datasets"
            )
    return folders


def avoided_prompts(paths: list[str]) -> list[str]:
    """Every user message of the datasets named in ``data.magpie.avoid`` (their train and eval splits)."""
    texts = []
    for folder in _avoided_folders(paths):
        plan = json.loads((folder / "prompts.json").read_text())
        texts += [m["content"] for conv in plan["conversations"] for m in conv if m["role"] == "user"]
    return texts


def _throughput_only(data: dict[str, Any]) -> list[str]:
    """The batching knobs that do not change this dataset's content, so are left out of its key.

    They change it only through sampling: Magpie (``source=self``) draws its prompts ``batch_size`` at a time
    from one seeded stream, and responses at ``temperature > 0`` come from one seeded stream per shard, batch
    by batch. Greedy answers to given prompts do not depend on them (float rounding in near ties aside).
    """
    if float(data["temperature"]) > 0:
        return []
    return ["shard_size"] if data["source"] == "self" else ["batch_size", "shard_size"]


def dataset_dir(cfg: DictConfig, meta: dict[str, Any]) -> Path:
    root = (
        Path(cfg.data.cache_dir).expanduser() if cfg.data.get("cache_dir") else selfspec_home() / "datasets"
    )
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(meta["target"])).name)[:40]
    return root / f"{slug}-{meta['data']['source']}-{digest}"


def _target_device(device: str) -> str:
    """``auto`` under torchrun with several GPUs: each rank takes ``cuda:LOCAL_RANK``."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return str(dev)


def _wait_for(path: Path, what: str, work: Path, peer: int, timeout_s: float) -> None:
    """Wait for rank ``peer`` to commit ``path`` (other ranks follow rank 0's plan, rank 0 the others' shards).

    A peer at work keeps its heartbeat changing (``_heartbeat``), however long its part takes. When neither
    ``path`` appears nor the heartbeat changes for ``timeout_s``, the ranks do not share ``work`` (the default
    cache under ``$SELFSPEC_HOME`` is node-local): one clear error instead of waiting forever.
    """
    beat = work / ".alive" / str(peer)
    seen, since, logged = _read_beat(beat), time.monotonic(), time.monotonic()
    while not path.exists():
        time.sleep(min(2.0, timeout_s / 10))
        now, beat_now = time.monotonic(), _read_beat(beat)
        if beat_now != seen:
            seen, since = beat_now, now
        elif now - since > timeout_s:
            raise SelfspecError(
                f"rank {_rank_world()[0]} waited {timeout_s:.0f} s for {what} ({path}) without any sign of rank "
                f"{peer} at work: the ranks do not share the dataset cache; set data.cache_dir to a folder "
                "every rank (every node) can read and write, or raise data.wait_timeout_s if rank "
                f"{peer} is only slow to start"
            )
        if now - logged > 60:
            logger.info("waiting for %s (%s)", what, path)
            logged = now


def _read_beat(beat: Path) -> str | None:
    try:
        return beat.read_text()
    except OSError:
        return None


@contextlib.contextmanager
def _heartbeat(work: Path, rank: int, world: int, timeout_s: float) -> Iterator[None]:
    """While this rank builds (world > 1), a daemon thread rewrites ``work/.alive/<rank>`` with a counter a few
    times per ``timeout_s``. Waiting ranks judge the change on their own clock, so clock skew does not matter."""
    if world == 1:
        yield
        return
    beat, stop = work / ".alive" / str(rank), threading.Event()

    def run() -> None:
        n = 0
        while True:
            n += 1
            with contextlib.suppress(OSError):  # a full or flaky disk must not kill the build from here
                beat.parent.mkdir(parents=True, exist_ok=True)
                beat.write_text(f"{n}\n")
            if stop.wait(min(30.0, timeout_s / 4)):
                return

    thread = threading.Thread(target=run, name=f"selfspec-heartbeat-{rank}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def make_plan(
    cfg: DictConfig, rollout: Rollout, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> dict[str, Any]:
    """The conversations to answer and their split; written once, so a resumed run answers the same ones."""
    d = cfg.data
    if d.source == "self":
        torch.manual_seed(int(cfg.seed))
        avoid = avoided_prompts(list(d.magpie.avoid))
        if avoid:
            logger.info(
                "self prompts: avoiding near duplicates of %d prompts in data.magpie.avoid", len(avoid)
            )
        texts, rejected = self_prompts(
            model, tokenizer, int(d.num_prompts), d.magpie, rollout.engine, avoid=avoid
        )
        convs: list[Conversation] = [[{"role": "user", "content": t}] for t in texts]
        convs = [c for c in convs if rollout.fits(c)]
        skipped = {f"self prompt {k}": v for k, v in rejected.items()}
        if len(convs) < len(texts):
            skipped["prompt longer than the context"] = len(texts) - len(convs)
    else:
        convs, counts = collect(
            source_records(d.source, d.path, d.hub_split), int(d.num_prompts), rollout.fits
        )
        skipped = dict(counts)
        if d.num_prompts > 0 and len(convs) < d.num_prompts:
            logger.warning(
                "the source holds only %d usable conversations of the %d asked", len(convs), d.num_prompts
            )
    if not convs:
        raise SelfspecError(
            "no usable prompt: every candidate was longer than the context; lower data.max_new_tokens"
        )
    n = len(convs)
    n_eval = round(d.eval_fraction * n)
    if d.eval_fraction > 0 and n >= 2:
        n_eval = min(max(1, n_eval), n - 1)
    n_eval = min(n_eval, n - 1)  # train keeps one conversation at least (one prompt: no eval split)
    eval_idx = sorted(random.Random(int(cfg.seed)).sample(range(n), n_eval))
    return {
        "conversations": convs,
        "eval": eval_idx,
        "shard_size": max(1, int(d.shard_size)),
        "skipped": skipped,
    }


def _shard_ids(plan: dict[str, Any]) -> list[int]:
    return list(range((len(plan["conversations"]) + plan["shard_size"] - 1) // plan["shard_size"]))


def _write_shards(work: Path, plan: dict[str, Any], rollout: Rollout, seed: int) -> None:
    rank, world = _rank_world()
    size, convs = plan["shard_size"], plan["conversations"]
    todo = [i for i in _shard_ids(plan) if i % world == rank and not (work / "shards" / f"{i:05d}").exists()]
    if not todo:
        return
    turns = sum(
        min(rollout.max_turns, sum(m["role"] == "user" for m in c))
        for i in todo
        for c in convs[i * size : (i + 1) * size]
    )
    bar = tqdm(total=turns, unit="turn", desc=f"generating (rank {rank})", disable=rank != 0)
    start, tokens = time.monotonic(), 0

    def on_batch(n_turns: int, n_tokens: int) -> None:
        nonlocal tokens
        tokens += n_tokens
        bar.update(n_turns)
        bar.set_postfix(tok_s=f"{tokens / max(time.monotonic() - start, 1e-6):.1f}")

    rollout.on_batch = on_batch
    for i in todo:
        if (work / COMPLETE).exists():  # another job finished this dataset meanwhile
            break
        torch.manual_seed(seed * 1_000_003 + i)  # a shard's samples do not depend on which rank wrote it
        samples = rollout.run(convs[i * size : (i + 1) * size])
        rows = {
            "input_ids": [s.input_ids for s in samples],
            "loss_mask": [s.loss_mask for s in samples],
            "prompt_len": [s.prompt_len for s in samples],
            "prompt_index": list(range(i * size, i * size + len(samples))),
        }
        with atomic_dir(work / "shards" / f"{i:05d}") as tmp:
            datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(tmp))
            maybe_die("data_shard")
            atomic_write_json(
                tmp / "stats.json",
                {
                    "unfinished_turns": sum(s.unfinished for s in samples),
                    "turns": sum(s.turns for s in samples),
                    "tokens": tokens,
                    "rank": rank,
                },
            )
    bar.close()
    logger.info(
        "rank %d: %d shards, %d generated tokens, %.1f tok/s",
        rank,
        len(todo),
        tokens,
        tokens / max(time.monotonic() - start, 1e-6),
    )


def _assemble(work: Path, plan: dict[str, Any], meta: dict[str, Any], timeout_s: float) -> None:
    """Join the shards into train/eval, write the metadata, then the COMPLETE marker last."""
    parts, stats, writers = [], Counter(), Counter()
    for i in _shard_ids(plan):
        shard = work / "shards" / f"{i:05d}"
        peer = i % _rank_world()[1]
        _wait_for(shard, f"shard {i} from rank {peer}", work, peer, timeout_s)
        parts.append(datasets.load_from_disk(str(shard)))
        shard_stats = json.loads((shard / "stats.json").read_text())
        writers[str(shard_stats.pop("rank", 0))] += 1
        stats.update(shard_stats)
    full = datasets.concatenate_datasets(parts)
    idx = full["prompt_index"]
    if sorted(idx) != list(range(len(plan["conversations"]))):
        raise SelfspecError(f"shards in {work} are inconsistent (duplicated or missing prompts): delete it")
    is_eval = set(plan["eval"])
    splits = datasets.DatasetDict(
        {
            "train": full.filter(lambda r: r["prompt_index"] not in is_eval),
            "eval": full.filter(lambda r: r["prompt_index"] in is_eval),
        }
    )
    with atomic_dir(work / "dataset") as tmp:
        splits.save_to_disk(str(tmp))
    maybe_die("data_assemble")
    meta = {
        **meta,
        "num_samples": {k: len(v) for k, v in splits.items()},
        "skipped": plan["skipped"],
        "unfinished_turns": stats["unfinished_turns"],
        "assistant_turns": stats["turns"],
        "shards_by_rank": dict(sorted(writers.items())),
    }
    atomic_write_json(work / "meta.json", meta)
    atomic_write_text(work / COMPLETE, "ok\n")
    # The dataset holds everything now; shards only served resumption (a killed writer's leftovers included).
    shutil.rmtree(work / "shards", ignore_errors=True)
    if plan["skipped"] or stats["unfinished_turns"]:
        logger.warning(
            "skipped: %s; %d of %d assistant turns hit max_new_tokens",
            plan["skipped"] or "none",
            stats["unfinished_turns"],
            stats["turns"],
        )


def build_dataset(
    cfg: DictConfig, target: PreTrainedModel | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Build (or reuse, or resume) the dataset ``cfg`` describes; return its DatasetDict folder (train, eval)."""
    engine = cfg.data.get("engine", "hf")
    if engine not in ENGINES:
        raise SelfspecError(f"unknown data.engine={engine!r}: use one of {', '.join(ENGINES)}")
    if target is None or tokenizer is None:
        # Another engine generates: the model here only names and fingerprints the target, so it stays on the
        # CPU (in the dtype an hf run on the device would use) and leaves the accelerators to the engine.
        device = _target_device(cfg.device)
        target, tokenizer = load_target(
            cfg.target.name_or_path,
            device=device if engine == "hf" else "cpu",
            dtype=resolve_dtype(cfg.target.dtype, resolve_device(device)),
            attn_implementation=cfg.target.attn_implementation,
        )
    meta = dataset_meta(cfg, target, tokenizer)
    work = dataset_dir(cfg, meta)
    if (work / COMPLETE).exists():  # a dataset vLLM made is reused without vLLM (a training venv)
        logger.info("reusing the dataset in %s", work)
        return work / "dataset"
    if engine == "vllm":
        import_vllm()  # before any generation: one line saying how to install it
    rank, world = _rank_world()
    with _heartbeat(work, rank, world, float(cfg.data.wait_timeout_s)), _builder_lock(work, rank):
        if (work / COMPLETE).exists():  # another job built it while this one waited
            logger.info("reusing the dataset in %s, built by another job", work)
            return work / "dataset"
        _build(cfg, work, meta, target, tokenizer)
    return work / "dataset"


@contextlib.contextmanager
def _builder_lock(work: Path, rank: int) -> Iterator[None]:
    """One job builds a dataset folder at a time: rank 0 holds ``.<folder>.lock`` beside it from the plan to
    ``COMPLETE``; a second job's rank 0 waits for it, then reuses the result. (Other ranks only follow rank 0's
    commits.) The lock is the kernel's (flock), so a killed holder releases it; the cache filesystem must
    support it, as local disks, NFSv4 and Lustre mounted with ``flock`` do."""
    if rank != 0:
        yield
        return
    from filelock import FileLock, Timeout

    work.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work.parent / f".{work.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("another job is building %s (it holds %s): waiting for it", work, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(
    cfg: DictConfig,
    work: Path,
    meta: dict[str, Any],
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Plan, generate this rank's shards, and (rank 0) assemble; resumes whatever an earlier run committed."""
    d = cfg.data
    rollout = Rollout(
        target,
        tokenizer,
        Sampling(int(d.max_new_tokens), float(d.temperature), float(d.top_p)),
        max_turns=int(d.max_assistant_turns),
        engine=make_engine(cfg, target, tokenizer),
    )
    try:
        _plan_and_write(cfg, work, rollout, target, tokenizer)
    finally:  # vLLM holds the accelerator's memory: free it for the training that follows
        close = getattr(rollout.engine, "close", None)
        if close is not None:
            close()
    if _rank_world()[0] == 0:
        _assemble(work, json.loads((work / "prompts.json").read_text()), meta, float(d.wait_timeout_s))
    else:
        _wait_for(work / COMPLETE, "rank 0 to assemble the dataset", work, 0, float(d.wait_timeout_s))


def _plan_and_write(
    cfg: DictConfig, work: Path, rollout: Rollout, target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    """The plan (rank 0 writes it once), then this rank's shards."""
    rank, _ = _rank_world()
    timeout_s = float(cfg.data.wait_timeout_s)
    plan_file = work / "prompts.json"
    if not plan_file.exists():
        if rank == 0:
            atomic_write_json(plan_file, make_plan(cfg, rollout, target, tokenizer))
        else:
            _wait_for(plan_file, "the prompt plan from rank 0", work, 0, timeout_s)
    plan = json.loads(plan_file.read_text())
    logger.info(
        "dataset %s: %d conversations, %d shards",
        work.name,
        len(plan["conversations"]),
        len(_shard_ids(plan)),
    )
    _write_shards(work, plan, rollout, int(cfg.seed))


def make_engine(cfg: DictConfig, target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The generation engine ``data.engine`` names; ``hf`` runs the loaded target in-process."""
    d, stops = cfg.data, stop_token_ids(target, tokenizer)
    engine = d.get("engine", "hf")
    if engine == "vllm":
        from selfspec.data.engine_vllm import VLLMEngine

        dtype = resolve_dtype(cfg.target.dtype, resolve_device(_target_device(cfg.device)))
        return VLLMEngine(resolve_target_path(cfg.target.name_or_path), dtype, stops, d.vllm, int(cfg.seed))
    if engine == "openai":
        from selfspec.data.engine_openai import OpenAIEngine

        return OpenAIEngine(d.openai, tokenizer, stops)
    from selfspec.data.engine_hf import HFEngine

    return HFEngine(target, stops, pad_id(tokenizer), slots=int(d.batch_size))


def load_splits(path: str | Path) -> datasets.DatasetDict:
    """Open a built dataset: the ``dataset`` folder ``build_dataset`` returns, or the folder holding it."""
    path = Path(path)
    if (path / "dataset").is_dir():
        path = path / "dataset"
    if not (path / "dataset_dict.json").exists():  # committed atomically: present means complete
        raise SelfspecError(f"{path} is not a complete selfspec dataset: rerun the generation")
    return datasets.load_from_disk(str(path))


def publish(dataset: Path, output_dir: str | Path) -> Path:
    """Expose a cached dataset as ``output_dir/dataset`` (a symlink, swapped atomically) + ``meta.json``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    link, tmp = out / "dataset", out / f".dataset.tmp-{os.getpid()}"
    if link.exists() and not link.is_symlink():
        raise SelfspecError(f"{link} exists and is not a link made by selfspec: move it away")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(dataset.resolve(), target_is_directory=True)
    os.replace(tmp, link)
    atomic_write_text(out / "meta.json", (dataset.parent / "meta.json").read_text())
    return link
