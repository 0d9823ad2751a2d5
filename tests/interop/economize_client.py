"""Runs INSIDE a throw-away venv with ``economize==0.3.2`` (not selfspec): decode prompts greedily with a
selfspec export (EAGLE-3 in the speculators or SGLang layout, or Medusa heads) and with the plain target.

    python economize_client.py TARGET_DIR EXPORT_DIR PROMPTS.json MAX_NEW CYCLE OUTPUT.json

PROMPTS.json: a list of token-id lists. OUTPUT.json: per prompt the drafted tokens, the plain greedy tokens and
the mean number of accepted drafts per cycle.
"""

import json
import sys

import economize
import torch
from transformers import AutoModelForCausalLM


def main(target_dir, export_dir, prompts_path, max_new, cycle, output_path) -> None:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    with open(prompts_path) as f:
        prompts = json.load(f)
    plain = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out = base.generate(
                ids, max_new_tokens=int(max_new), do_sample=False, eos_token_id=None, pad_token_id=0
            )
            plain.append(out[0, len(p) :].tolist())
    model = economize.load(base, export_dir)
    decoding = economize.DecodeConfig(cycle_length=int(cycle))
    rows = []
    with torch.no_grad():
        for p, ref in zip(prompts, plain, strict=True):
            res = model.decode(torch.tensor(p), int(max_new), decoding=decoding)
            rows.append(
                {"tokens": res.tokens.tolist(), "plain": ref, "mean_accepted": float(res.mean_accepted)}
            )
    with open(output_path, "w") as f:
        json.dump({"technique": type(model.drafting_technique).__name__, "rows": rows}, f)


if __name__ == "__main__":
    main(*sys.argv[1:7])
