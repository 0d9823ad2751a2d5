#!/usr/bin/env bash
# After `BUDGET=quick RESULTS=results/epyc_bf16_1207 RUNS=outputs/quick BENCH_PROMPTS=16 OTHER_PROMPTS=8 make reproduce`
# (2026-12-07, AMD EPYC with avx512_bf16; its economize stage skipped for time and tried here as step 3): the checks
# on the trained drafters, alone, in this order.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
R=results/epyc_bf16_1207
while pgrep -f "scripts/reproduce.sh" > /dev/null; do sleep 20; done
# 0. DFlash's lossless and refusal tests
$PY -m pytest -q -p no:cacheprovider tests/heads/test_dflash.py tests/heads/test_formats.py \
    tests/decode/test_decoder.py tests/decode/test_integration.py tests/decode/test_sampling.py -k dflash \
    > $R/pytest_dflash.log 2>&1
# 1. draft-step costs of every family (bf16 and fp32)
$PY -m selfspec.heads.bench_heads > $R/bench_heads.md 2> $R/bench_heads.log
# 2. speculators 0.9.0 reads the trained exports (EAGLE-3, DFlash) with equal logits; re-imported folders decode
SELFSPEC_INTEROP_VENVS=/work/venvs/interop SELFSPEC_INTEROP_TRAINED=outputs/quick PYTHON=$PY \
    bash scripts/interop_check.sh -k "speculators or dflash" > $R/interop_trained.log 2>&1
# 3. economize 0.3.2 on the same exported heads (8 held-out prompts x 128 tokens, bf16, best of 2 alternating rounds):
#    run under `timeout 1000` this session, it had not printed its table when the limit stopped it
$PY scripts/economize_compare.py --venv /work/venvs/economize --drafter outputs/quick/eagle3/drafter \
    --drafter outputs/quick/medusa/drafter > $R/economize.md 2> $R/economize.log
