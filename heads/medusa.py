"""Medusa heads (Cai et al., 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads", arXiv:2401.10774).

Head ``k`` (0-based) reads the target's final state at position t (``hidden_states[L]``, post-norm) and
predicts the token at ``t + k + 2``; the target's own lm_head already gives ``t + 1``. Each head is
``num_layers`` residual blocks ``x + SiLU(W x + b)`` with ``W`` zero-initialised, so an untrained head returns
its input and its first prediction is the target's own next-token distribution, then an output layer.

The output layers dominate the draft cost (K x V x H per drafted position). Two layouts:
- ``own_lm_head=False``: every head uses the target's frozen lm_head; all K heads go through it as ONE matmul
  ``(K*B*T, H) @ (H, V)``, which reads the V x H weight once instead of K times.
- ``own_lm_head=True``: the heads' output layers are one stacked parameter ``lm_head`` of shape (K, V, H)
  (initialised from the target's lm_head by ``init_from_target``) used through one batched matmul.
Export to the FasterDecoding layout (``{k}.{i}.linear.weight``, ``{k}.{num_layers}.weight``) is a renaming
of ``heads.{k}.{i}.linear.*`` and ``lm_head[k]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfspec.heads.base import Drafter, TargetDims, project


@dataclass
class MedusaConfig(TargetDims):
    """User-facing: ``num_heads``, ``num_layers``, ``own_lm_head``. Target-derived (filled by build_drafter):
    ``hidden_size``, ``vocab_size``, ``num_target_layers``."""

    type: str = "medusa"
    num_heads: int = 4
    num_layers: int = 1
    own_lm_head: bool = False


class ResBlock(nn.Module):
    """``x + SiLU(linear(x))`` with a zero weight: the identity at initialisation."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)  # SiLU(0) = 0, so the block is exactly the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class Medusa(Drafter):
    drafter_type = "medusa"

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__(config)
        h, v, k = config.hidden_size, config.vocab_size, config.num_heads
        # Every block is its own module (no `[ResBlock] * n`, which would share one block's weights).
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(h) for _ in range(config.num_layers)]) for _ in range(k)
        )
        self.lm_head = nn.Parameter(torch.empty(k, v, h)) if config.own_lm_head else None
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head, std=0.02)

    def feature_layers(self) -> list[int]:
        return [self.config.num_target_layers]

    @torch.no_grad()
    def init_from_target(self) -> None:
        """Copy the bound target's lm_head into every own output layer (training starts from the target)."""
        if self.lm_head is not None:
            w = self.target_lm_head.weight  # (V, H)
            self.lm_head.copy_(w.unsqueeze(0).expand_as(self.lm_head))

    def head_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (K, B, T, H): the residual stacks of all heads."""
        return torch.stack([head(hidden) for head in self.heads])

    def head_logits(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """(..., H) states of head k -> (..., V) logits (training projects only the rows that count)."""
        if self.lm_head is None:
            head = self.target_lm_head
            return project(z, head.weight, head.bias)
        return project(z, self.lm_head[k])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H) = target ``hidden_states[L]`` -> logits (K, B, T, V); head k predicts t+k+2."""
        z = self.head_states(hidden)  # (K, B, T, H)
        k, b, t, h = z.shape
        if self.lm_head is None:
            # One matmul for all heads through the frozen (V, H) weight, read once.
            head = self.target_lm_head
            return project(z.reshape(k * b * t, h), head.weight, head.bias).view(k, b, t, -1)
        if b * t <= 64:  # drafting: (K, V, H) @ (K, H, BT) streams each head's weight in storage order
            out = torch.bmm(self.lm_head, z.reshape(k, b * t, h).transpose(1, 2))  # (K, V, BT)
            return out.transpose(1, 2).reshape(k, b, t, -1)
        return torch.bmm(z.reshape(k, b * t, h), self.lm_head.transpose(1, 2)).view(k, b, t, -1)
