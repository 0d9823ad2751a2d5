"""Shared fixtures: the tiny random target (fast) and the embedded SmolLM2 target (``integration``)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


INTEGRATION_TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the embedded target generate and train with a 135M model: 600 s (the default limit, set in
    pyproject) is ample on an idle 2-core box but not on a shared one, so they get a longer default limit."""
    for item in items:
        if item.get_closest_marker("integration") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(INTEGRATION_TIMEOUT_S))


@pytest.fixture(scope="session")
def tiny_target():
    """``(model, tokenizer)`` of the 4-layer random Llama with a byte-level tokenizer, fp32 on CPU."""
    from selfspec.target import TINY_TARGET, load_target

    return load_target(TINY_TARGET, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def embedded_target():
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, converted once into $SELFSPEC_HOME."""
    from selfspec.target import EMBEDDED_TARGET, load_target

    return load_target(EMBEDDED_TARGET, device="cpu", dtype="fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Every test ends with the environment it started with and no default process group.

    ``train_job`` creates a single-rank gloo group and sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_*; without
    this a later test would silently run as "rank 0 of an existing group" (or a test setting RANK would make
    later ones think they are another rank).
    """
    saved = dict(os.environ)
    yield
    from selfspec.train.parallel import destroy_distributed

    destroy_distributed()
    os.environ.clear()
    os.environ.update(saved)
