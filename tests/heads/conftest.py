"""Helpers for the drafter tests: tiny inputs and a fresh drafter of each family on the tiny target."""

from __future__ import annotations

import pytest
import torch

from selfspec.heads import build_drafter

FAMILIES = ["medusa", "eagle", "eagle3", "draft_model", "dflash"]
HEAD_CFGS = {
    "medusa": {"type": "medusa", "num_heads": 3, "num_layers": 2, "own_lm_head": True},
    "eagle": {"type": "eagle"},
    "eagle3": {"type": "eagle3", "draft_vocab_size": 100},
    "draft_model": {"type": "draft_model", "num_layers": 2},
    "dflash": {"type": "dflash", "draft_vocab_size": 100, "block_size": 4, "num_layers": 2},
}


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every floating parameter random values (zero-init would hide wiring bugs in equality tests)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def make_drafter(family: str, target, randomised: bool = True):
    counts = None
    if family in ("eagle3", "dflash"):
        counts = torch.arange(target.config.vocab_size, dtype=torch.float).flip(0)
    d = build_drafter(HEAD_CFGS[family], target, token_counts=counts)
    if randomised:
        randomise(d)
    return d.eval()


def draft_outputs(drafter, target, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every family's forward on the same inputs, as a tuple of tensors."""
    from selfspec.heads import target_forward

    b, t = input_ids.shape
    pos = torch.arange(t).expand(b, t)
    feats = target_forward(target, input_ids, layers=drafter.feature_layers()).hidden
    kind = drafter.drafter_type
    if kind == "medusa":
        return (drafter(feats[0]),)
    if kind == "eagle":
        return drafter(feats[0], input_ids, pos)
    if kind == "eagle3":
        return drafter(drafter.fuse(torch.cat(feats, -1)), input_ids, pos)
    if kind == "dflash":  # one block per position: (B, T, K, Vd)
        return (drafter.forward_anchors(drafter.fuse(torch.cat(feats, -1)), input_ids, pos),)
    return (drafter(input_ids),)


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
