#!/usr/bin/env bash
# The vLLM checks (heavy: vLLM starts in ~25 s each time and generates on 2 cores), run in the vLLM venv:
#   bash scripts/vllm_check.sh [DRAFTER]
# 1. the real-vLLM tests: data.engine=openai against `vllm serve` (killed mid-run, then resumed), data.engine=vllm;
# 2. if DRAFTER (a selfspec EAGLE-3 folder) is given: the serving check (scripts/vllm_check.py) on its held-out
#    prompts and on the shipped other-kinds prompts, fp32, chain of 3; reports under $OUT (default results/vllm).
# VLLM_PYTHON: the venv's python (default: venv-vllm/bin/python, else /work/venvs/vllm/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VLLM_PYTHON:-}" ]; then
    if [ -x venv-vllm/bin/python ]; then VLLM_PYTHON=venv-vllm/bin/python; else VLLM_PYTHON=/work/venvs/vllm/bin/python; fi
fi
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2} SELFSPEC_VLLM_PYTHON=$VLLM_PYTHON HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
OUT=${OUT:-results/vllm}
"$VLLM_PYTHON" -m pytest -q -m vllm tests/data/test_vllm_serve.py
if [ $# -ge 1 ]; then
    "$VLLM_PYTHON" scripts/vllm_check.py --drafter "$1" --prompts eval --out "$OUT/check_eval"
    "$VLLM_PYTHON" scripts/vllm_check.py --drafter "$1" --prompts other_kinds --out "$OUT/check_other_kinds"
fi
