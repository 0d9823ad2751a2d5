"""Runs INSIDE a throw-away venv with ``speculators==0.9.0`` (not selfspec): load a selfspec ``speculators``
export with ``SpeculatorModel.from_pretrained`` and write its first-step draft logits for given inputs.

    python speculators_client.py EXPORT_DIR INPUTS.pt OUTPUT.pt

INPUTS.pt: {"aux": (1, T, 3H) concat of the target's aux states, "input_ids": (1, T), "position_ids": (1, T)}.
OUTPUT.pt: {"logits": (1, T, Vd), "draft_tokens": (1, T), "aux_ids": list, "class": str}.
"""

import sys

import torch
from speculators import SpeculatorModel, SpeculatorModelConfig


def main(export_dir: str, inputs_path: str, output_path: str) -> None:
    config = SpeculatorModelConfig.from_pretrained(export_dir)
    config.transformer_layer_config._attn_implementation = "sdpa"  # CPU: no flex attention
    model = SpeculatorModel.from_pretrained(export_dir, config=config).float().eval()
    inputs = torch.load(inputs_path)
    captured = {}
    model.lm_head.register_forward_hook(lambda mod, args, out: captured.setdefault("logits", out))
    seq = inputs["input_ids"].shape[1]
    with torch.no_grad():
        draft = model(
            hidden_states=inputs["aux"],
            input_ids=inputs["input_ids"],
            document_ids=torch.zeros(1, seq, dtype=torch.long),
            position_ids=inputs["position_ids"],
            ttt_steps=1,
        )
    torch.save(
        {
            "logits": captured["logits"],
            "draft_tokens": draft[0],
            "aux_ids": list(model.config.eagle_aux_hidden_state_layer_ids),
            "class": type(model).__name__,
        },
        output_path,
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
