"""selfspec with every step forced plain against ``target.generate``, interleaved (fp32, batch 1, 128 tokens).

python results/own_head/plain_vs_generate.py [--drafter outputs/eagle3_q512/drafter] [--no-grad]
``--no-grad``: run the decoder under ``torch.no_grad`` inside ``inference_mode``'s place (the state before
``SpeculativeDecoder.generate`` ran in inference mode) by calling the undecorated function.
"""

from __future__ import annotations

import argparse
import time

import torch

from selfspec.decode import SpeculativeDecoder
from selfspec.heads import load_drafter
from selfspec.target import load_target

PROMPTS = ["Write a short poem about the sea.", "Give me three tips for studying."]


class Plain:
    """A gate that never drafts."""

    def speculate(self) -> bool:
        return False

    def record(self, *args) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", default="outputs/eagle3_q512/drafter")
    ap.add_argument("--no-grad", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    target, tok = load_target("smollm2-135m-instruct", device="cpu", dtype="fp32")
    dec = SpeculativeDecoder(target, load_drafter(args.drafter, target=target), adaptive=True)
    run = SpeculativeDecoder.generate.__wrapped__ if args.no_grad else SpeculativeDecoder.generate
    total = {"generate": 0.0, "selfspec plain": 0.0}
    for _ in range(args.repeat):
        for text in PROMPTS:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt")  # fmt: skip
            ids = ids if torch.is_tensor(ids) else ids["input_ids"]
            t0 = time.perf_counter()
            with torch.no_grad():
                ref = target.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=128
                )
            total["generate"] += time.perf_counter() - t0
            dec._gates[1] = Plain()
            t0 = time.perf_counter()
            if args.no_grad:
                with torch.no_grad():
                    out = run(dec, ids, max_new_tokens=128)
            else:
                out = run(dec, ids, max_new_tokens=128)
            total["selfspec plain"] += time.perf_counter() - t0
            assert torch.equal(out.sequences, ref), "not identical to generate"
    mode = "no_grad" if args.no_grad else "inference_mode"
    print(
        "| decoder mode | generate (s) | selfspec plain (s) | selfspec / generate speed |\n|---|---:|---:|---:|"
    )
    print(f"| {mode} | {total['generate']:.2f} | {total['selfspec plain']:.2f} | "
          f"{total['generate'] / total['selfspec plain']:.3f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
