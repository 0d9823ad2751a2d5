"""Runs INSIDE a throw-away venv with ``speculators==0.9.0`` (not selfspec): load a selfspec ``speculators`` DFlash
export with ``SpeculatorModel.from_pretrained`` and write the block logits of its own training forward, whose
anchors are exactly the given positions (every position of ``loss_mask`` is an anchor when ``max_anchors`` equals
their count).

    python speculators_dflash_client.py EXPORT_DIR INPUTS.pt OUTPUT.pt

INPUTS.pt: {"aux": (1, T, n*H) concat of the target's aux states, "input_ids": (1, T), "anchors": (N,) positions
< T - block_size}. OUTPUT.pt: {"logits": (1, N*K, Vd), "blocks": (N*K,) base indices, "class": str, "aux_ids": list,
"block_size": int, "mask_token_id": int}.
"""

import sys

import torch
from speculators import SpeculatorModel, SpeculatorModelConfig


def main(export_dir: str, inputs_path: str, output_path: str) -> None:
    config = SpeculatorModelConfig.from_pretrained(export_dir)
    config.transformer_layer_config._attn_implementation = "sdpa"  # CPU: no flex attention
    model = SpeculatorModel.from_pretrained(export_dir, config=config).float().eval()
    inputs = torch.load(inputs_path)
    aux, ids, anchors = inputs["aux"], inputs["input_ids"], inputs["anchors"]
    seq = ids.shape[1]
    loss_mask = torch.zeros(1, seq, dtype=torch.long)
    loss_mask[0, anchors] = 1
    with torch.no_grad():
        _, logits, _, _, blocks = model._backbone_forward(
            aux,
            ids,
            loss_mask,
            torch.zeros(1, seq, model.config.transformer_layer_config.hidden_size),
            torch.zeros(1, seq, dtype=torch.long),
            torch.arange(seq)[None],
            max_anchors=len(anchors),
        )
    torch.save(
        {
            "logits": logits,
            "blocks": blocks,
            "class": type(model).__name__,
            "aux_ids": list(model.config.aux_hidden_state_layer_ids),
            "block_size": int(model.config.block_size),
            "mask_token_id": int(model.config.mask_token_id),
        },
        output_path,
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
