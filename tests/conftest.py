"""Shared fixtures: the tiny random target (fast) and the embedded SmolLM2 target (``integration``)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
