"""The drafter base class: a config, the target features it reads, and the frozen target parts it borrows.

A drafter shares the target's embedding, lm_head and final norm but must never own them: they stay out of
``state_dict()``, ``parameters()`` (so out of the optimizer) and out of DeepSpeed ZeRO-3, which wraps and
partitions only the drafter. ``bind(target)`` therefore keeps them in a plain dict that ``nn.Module`` does not
track.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfspec.target import project  # noqa: F401  (the drafters' output layers import it from here)
from selfspec.utils import SelfspecError


@dataclass
class TargetDims:
    """Target-derived fields every drafter config carries; ``build_drafter`` fills them from the target.

    ``num_target_layers`` is L (so ``hidden_states[L]`` is the final post-norm state); ``target_config`` is the
    target's transformers config dict (EAGLE layers are rebuilt from it without loading the target).
    """

    hidden_size: int = 0
    vocab_size: int = 0
    num_target_layers: int = 0
    target_architecture: str = ""
    target_config: dict[str, Any] = field(default_factory=dict)


class _Borrowed(dict):
    """The bound target parts: shared, never copied (``copy.deepcopy(drafter)`` must not clone the target)."""

    def __deepcopy__(self, memo: dict) -> _Borrowed:
        return self


class Drafter(nn.Module):
    """Base of every drafter family. Subclasses set ``drafter_type`` and take their @dataclass config."""

    drafter_type: str = ""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        # A dict: nn.Module.__setattr__ only registers Modules/Parameters, so nothing in here is tracked.
        self._target_parts: dict[str, nn.Module] = _Borrowed()
        self.acceptance: dict[str, Any] | None = None  # p[d][r] for tree planning (acceptance.json)

    def feature_layers(self) -> list[int]:
        """Indices into the target's ``hidden_states`` tuple that this drafter consumes (see features.py)."""
        return []

    def weights_metadata(self) -> dict[str, str]:
        """Facts about the weights that its config alone does not pin, recorded in model.safetensors' header."""
        return {}

    def check_weights_metadata(self, metadata: dict[str, str], source: str | Path) -> None:
        """Refuse (one SelfspecError line) a config that does not fit what the weights recorded."""

    # -- the frozen target parts ------------------------------------------------------------------------

    def bind(self, target: nn.Module) -> Drafter:
        """Borrow the target's input embedding, lm_head and final norm (frozen, untracked). Returns self."""
        self._target_parts = _Borrowed(
            embed_tokens=target.get_input_embeddings(),
            lm_head=target.get_output_embeddings(),
            norm=_final_norm(target),
        )
        return self

    @property
    def is_bound(self) -> bool:
        return bool(self._target_parts)

    def _part(self, name: str) -> nn.Module:
        part = self._target_parts.get(name)
        if part is None:
            raise SelfspecError(
                f"this {self.drafter_type} drafter is not bound to a target: call drafter.bind(target) "
                "or load_drafter(path, target=target) first"
            )
        return part

    @property
    def embed_tokens(self) -> nn.Module:
        return self._part("embed_tokens")

    @property
    def target_lm_head(self) -> nn.Module:
        return self._part("lm_head")

    @property
    def target_norm(self) -> nn.Module:
        return self._part("norm")

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")


def _final_norm(target: nn.Module) -> nn.Module:
    """The target's final norm (``model.norm`` in Llama-family models); identity if there is none."""
    base = getattr(target, "base_model", target)
    inner = getattr(base, "model", base)
    for name in ("norm", "final_layernorm", "ln_f"):
        mod = getattr(inner, name, None)
        if isinstance(mod, nn.Module):
            return mod
    return nn.Identity()
