#!/usr/bin/env bash
# After `EXPERIMENTS="eagle3 dflash" SKIP="quick scaling oracle economize" RESULTS=results/intel_amx/long
# OTHER_PROMPTS=24 make reproduce` (2026-12-06 night, Intel Xeon AMX): the measurements on the long drafters, on the
# same machine, alone, one after another, in this order. (They ran as three chained scripts; the steps and their
# commands are those.)
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
R=results/intel_amx/long E3=outputs/reproduce/eagle3/drafter
while pgrep -f "scripts/reproduce.sh" > /dev/null; do sleep 20; done
# 1. draft-step costs of every family (bf16 and fp32)
$PY -m selfspec.heads.bench_heads > $R/bench_heads.md 2> $R/bench_heads.log
# 2. economize 0.3.2 on the long EAGLE-3 (bf16, 8 held-out prompts x 128 tokens)
$PY scripts/economize_compare.py --venv /work/venvs/economize --drafter $E3 > $R/economize.md 2> $R/economize.log
# 3. vLLM serving the long EAGLE-3 (chain of 3, 8 held-out prompts x 128 tokens): bf16, then fp32
export VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1
for dt in bf16 fp32; do
    /work/venvs/vllm/bin/python scripts/vllm_check.py --drafter $E3 --prompts eval --max-new-tokens 128 \
        --dtype $dt --out $R/vllm_$dt > $R/vllm_$dt.log 2>&1 || echo "vllm_check $dt: rc $?" >> $R/after.rc
done
# 4. a deeper tree than the cost model picks (acceptance length; gate off), on the bench's 24 held-out prompts
$PY decode/bench/run.py drafter=$E3 max_new_tokens=128 num_prompts=24 "methods=[target,selfspec]" \
    decode.depth=6 decode.topk=8 decode.total_tokens=48 decode.adaptive=false \
    output_dir=$R/bench_eagle3_tree48 > $R/bench_eagle3_tree48.log 2>&1
# 5. economize again (does its ratio repeat?)
$PY scripts/economize_compare.py --venv /work/venvs/economize --drafter $E3 > $R/economize_2.md 2> $R/economize_2.log
