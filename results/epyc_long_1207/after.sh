#!/usr/bin/env bash
# After `PYTHON=.venv/bin/python EXPERIMENTS="eagle3" SKIP="quick scaling oracle economize"
# RESULTS=results/epyc_long_1207 OTHER_PROMPTS=24 make reproduce` (2026-12-07, AMD EPYC with avx512_bf16, 2 cores):
# the measurements on the long EAGLE-3, alone on the machine, one after another, in this order.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
R=results/epyc_long_1207 E3=outputs/reproduce/eagle3/drafter
while pgrep -f "scripts/reproduce.sh" > /dev/null; do sleep 20; done
# 1. vLLM serving the long EAGLE-3: chains of 3 and 4, 2 alternating rounds, bf16, 8 held-out prompts x 128 tokens
export VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1
/work/venvs/vllm/bin/python scripts/vllm_check.py --drafter $E3 --prompts eval --max-new-tokens 128 \
    --dtype bf16 --k 3,4 --rounds 2 --out $R/vllm_bf16 > $R/vllm_bf16.log 2>&1 || echo "vllm_check: rc $?" >> $R/after.rc
