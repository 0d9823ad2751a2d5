"""Runs INSIDE a venv with ``economize==0.3.2`` (not selfspec): time economize decoding a selfspec export.

    python economize_client.py TARGET_DIR EXPORT_DIR PROMPTS.json MAX_NEW DTYPE CYCLES OUTPUT.json

PROMPTS.json: a list of token-id lists. CYCLES: comma-separated draft lengths per cycle to try. OUTPUT.json:
per cycle length the total new tokens, seconds and mean accepted drafts per cycle, and the decoded tokens.
"""

import json
import sys
import time

import economize
import torch
from transformers import AutoModelForCausalLM


def main(target_dir, export_dir, prompts_path, max_new, dtype, cycles, output_path) -> None:
    torch.manual_seed(0)
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    base = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch_dtype).eval()
    with open(prompts_path) as f:
        prompts = json.load(f)
    model = economize.load(base, export_dir)
    out = {"technique": type(model.drafting_technique).__name__, "cycles": {}}
    with torch.no_grad():
        model.decode(torch.tensor(prompts[0]), 8, decoding=economize.DecodeConfig(cycle_length=2))  # warm-up
        for cycle in (int(c) for c in cycles.split(",")):
            config = economize.DecodeConfig(cycle_length=cycle)
            tokens, seconds, accepted, outputs = 0, 0.0, [], []
            for p in prompts:
                t0 = time.perf_counter()
                res = model.decode(torch.tensor(p), int(max_new), decoding=config)
                seconds += time.perf_counter() - t0
                new = res.tokens.tolist()
                tokens += len(new)
                accepted.append(float(res.mean_accepted))
                outputs.append(new)
            out["cycles"][str(cycle)] = {
                "tokens": tokens,
                "seconds": seconds,
                "mean_accepted_drafts": sum(accepted) / len(accepted),
                "outputs": outputs,
            }
    with open(output_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:8])
