"""One 1-token forward of the embedded target after a 200-token prompt, and ``generate``, in bf16 and fp32 in turn:
stock transformers, no selfspec code (results/epyc_dtype_1208/forward.md)."""

import os
import time

import torch
from transformers import AutoModelForCausalLM

home = os.environ.get("SELFSPEC_HOME", os.path.expanduser("~/.cache/selfspec"))
path = os.path.join(home, "targets", "SmolLM2-135M-Instruct")
torch.manual_seed(0)
x = torch.randint(100, 5000, (1, 200))
for dt in (torch.bfloat16, torch.float32, torch.bfloat16, torch.float32):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dt).eval()
    with torch.inference_mode():
        out = m(x, use_cache=True)
        pkv, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            o = m(tok, past_key_values=pkv, use_cache=True)
            ts.append(time.perf_counter() - t0)
            tok = o.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        m.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=64, min_new_tokens=64, do_sample=False
        )
        tg = time.perf_counter() - t0
    ts.sort()
    print(
        f"{dt} forward min {ts[0] * 1e3:.1f} median {ts[15] * 1e3:.1f} ms, generate {64 / tg:.1f} tok/s",
        flush=True,
    )
