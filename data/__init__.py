"""Self-distillation data: the target writes its own training set (prompts too, if asked).

``build_dataset(cfg)`` turns prompts (written by the target itself with Magpie, or read from jsonl/parquet
files or a hub dataset) into conversations answered by the target, and ``load_splits(path)`` opens the result.

On-disk layout, one folder per dataset under ``data.cache_dir`` (default ``$SELFSPEC_HOME/datasets``), named
``<target>-<source>-<hash>`` where the hash covers everything that determines the content (target name,
weights and tokenizer fingerprints, the ``data`` config except where it lives, how long ranks wait, and the
batching knobs when nothing is sampled, the source file's hash, seed)::

    prompts.json    the plan: conversations to answer, eval prompt indices, shard size (written once, atomically)
    shards/NNNNN/   committed atomically as they are generated; rank r writes shards i with i % world == r
    dataset/        DatasetDict "train"/"eval" (columns input_ids, loss_mask, prompt_len, prompt_index)
    meta.json       target name + fingerprints, generation params, source, seed, counts and skips
    COMPLETE        written last; only then is the folder reused as is (and the shards deleted)
    .alive/RANK     under several ranks, each one's heartbeat: a rank waiting for another's commit gives up
                    with a clear error after data.wait_timeout_s without a change (a cache_dir not shared)

A killed run leaves the plan and the committed shards; the rerun skips them and generates the rest, so every
prompt index appears exactly once. The split is by prompt: an eval conversation is never in train.
One job builds a folder at a time: rank 0 holds ``.<folder>.lock`` (beside the folder) from the plan to
``COMPLETE``; a second job with the same config waits for it and reuses the result, or resumes the build if
the first job dies.
``python data/generate.py output_dir=D`` also leaves ``D/dataset`` (a symlink to the cached ``dataset/``,
opened by ``datasets.load_from_disk``) and ``D/meta.json``.
"""

from selfspec.data.builder import build_dataset, load_splits

__all__ = ["build_dataset", "load_splits"]
