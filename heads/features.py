"""What the frozen target gives a drafter: logits and selected hidden states, in one forward.

HF ``output_hidden_states=True`` returns ``L + 1`` states: index 0 is the embedding output, index ``i`` the
output of decoder layer ``i - 1``, and index ``L`` the final state *after* the model's final norm (the input of
``lm_head``). Drafters name the states they consume as indices into that tuple (``Drafter.feature_layers()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from selfspec.target import output_logits


class TargetOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    hidden: tuple[torch.Tensor, ...]  # one (B, T, H) per requested index, in the requested order
    past_key_values: Any  # the cache passed in (updated in place), or None


def target_forward(
    target: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    layers: Sequence[int] = (),
    logits_to_keep: int = 0,
    own_head: bool = False,
) -> TargetOutput:
    """Run the target once and keep only the hidden states named in ``layers``.

    ``attention_mask`` may be a 2D padding mask or a 4D bool mask ``(B, 1, T, S)`` (True = attend) over the
    cached plus new keys, with explicit ``position_ids``; both are passed through unchanged, as is the
    cache (updated in place when given). ``logits_to_keep``: logits of the last N positions only (0: all).
    ``own_head``: run the decoder, then the lm_head through ``selfspec.target.output_logits`` (decoding's
    prefill and verification; ``selfspec.target.project`` says which product it takes and why).
    """
    want_hidden = len(layers) > 0
    model = target.get_decoder() if own_head else target
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=past_key_values is not None,
        output_hidden_states=want_hidden,
        **({} if own_head else {"logits_to_keep": logits_to_keep}),
    )
    if own_head:
        final = out.last_hidden_state
        logits = output_logits(target, final[:, -logits_to_keep:] if logits_to_keep else final)
    else:
        logits = out.logits
    hidden: tuple[torch.Tensor, ...] = ()
    if want_hidden:
        states = out.hidden_states
        n = len(states)
        for i in layers:
            if not -n <= i < n:
                raise IndexError(f"hidden state index {i} out of range for a target with {n - 1} layers")
        hidden = tuple(states[i] for i in layers)
    return TargetOutput(logits, hidden, past_key_values)
