"""Fault injection for the kill tests: ``SELFSPEC_FAULT=<point>[:<n>]`` SIGKILLs the process the n-th time
(default: the first) it reaches ``maybe_die("<point>")``; ``<point>:<n>:stop`` SIGSTOPs it instead, so a test
can act while it is frozen mid-way (holding its locks) and then continue or kill it.

A SIGKILL is what a cluster's out-of-memory killer, a pre-empted node or ``scancel`` delivers: no ``finally``,
no atexit, no flush. The tests (``pytest -m faults``) kill a real subprocess at each point, rerun it and
compare with an uninterrupted run. Unset (always, outside those tests) a point costs one dict lookup.

Points (where each sits and what it leaves behind):

- ``data_shard``: inside a shard's commit, after its Arrow files and before the rename (``data/builder.py``):
  the earlier shards committed, this one a half-written temporary folder.
- ``data_assemble``: after the joined ``dataset/`` folder is committed, before ``meta.json`` and ``COMPLETE``.

- ``train_step``: after an optimizer step, before it is logged or checkpointed (``train/loop.py``).
- ``ckpt_between_files``: inside a checkpoint save, after every rank's DeepSpeed files and before selfspec's
  ``selfspec.json`` marker (``train/checkpoints.py``): a ``step_*`` folder that must not be resumed from.
- ``export_between_files``: inside the drafter export, after the weights and before ``config.json``
  (``heads/folder.py``): a temporary folder beside ``output_dir/drafter``.
- ``atomic_dir_swap``: between the two renames that replace an existing folder (``selfspec/utils.py``): no
  ``dest``, its previous version under ``.<name>.old-<unique>``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

ENV = "SELFSPEC_FAULT"

# Hits per point in this process: the one piece of module state, so that ``:n`` means "the n-th time" without
# threading a counter through every caller. Only read when SELFSPEC_FAULT names the point.
_hits: Counter[str] = Counter()


def maybe_die(point: str) -> None:
    """SIGKILL (or SIGSTOP) this process if ``SELFSPEC_FAULT`` names ``point`` and this is its n-th hit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    nth, _, action = rest.partition(":")
    _hits[point] += 1
    if _hits[point] == int(nth or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
