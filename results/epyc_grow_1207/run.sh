#!/usr/bin/env bash
# 2026-12-07 night, AMD EPYC with avx512_bf16, 2 cores, bf16: grow the long EAGLE-3 (results/epyc_long_1207) with a
# second self-written dataset that vLLM generates, whose prompts avoid the first dataset's, then measure it
# beside the first on the same prompts. Each stage alone on the machine, in this order.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python} VPY=${VPY:-/work/venvs/vllm/bin/python}
R=results/epyc_grow_1207 OLD_RUN=outputs/reproduce/eagle3 NEW_RUN=outputs/eagle3_grow
OLD=$HOME/.cache/selfspec/datasets/smollm2-135m-instruct-self-5753e69404465a08  # the first long dataset
export VLLM_CPU_KVCACHE_SPACE=4 HF_HUB_OFFLINE=1
echo "| stage | wall time (s) |" > $R/budget.md; echo "|---|---:|" >> $R/budget.md
t() { local s=$SECONDS label=$1; shift; "$@"; echo "| $label | $((SECONDS - s)) |" >> $R/budget.md; }
data=(data.num_prompts=3072 data.engine=vllm "data.magpie.avoid=[$OLD]" +data.vllm.kwargs.enable_chunked_prefill=false)
# 1. the second dataset: 3072 Magpie prompts written by the target through vLLM, none a near duplicate of the first's
#    (started by hand at 18:10 with this command into logs/data_vllm2.log; this rerun waits for it, then reuses it)
while pgrep -f "data/generate.py" > /dev/null; do sleep 20; done
t "data (reuse)" "$VPY" data/generate.py "${data[@]}" output_dir=outputs/data-vllm-2 > logs/grow_data.log 2>&1
# 2. the long EAGLE-3 goes on from its weights and draft vocabulary over the new data, twice, same recipe
t "train eagle3_grow" "$PY" train/run.py +experiment=eagle3_long "${data[@]}" train.init_from=$OLD_RUN/drafter train.epochs=2 output_dir=$NEW_RUN > logs/grow_train.log 2>&1
# 3. both drafters in one bench: the first dataset's held-out prompts (the 24 of results/epyc_long_1207), other kinds
bench=(decode/bench/run.py max_new_tokens=128 num_prompts=24 "drafter=[$OLD_RUN/drafter,$NEW_RUN/drafter]")
t "bench, held-out" "$PY" "${bench[@]}" dataset=$OLD/dataset output_dir=$R/bench > logs/grow_bench.log 2>&1
t "bench, other kinds" "$PY" "${bench[@]}" prompts=other_kinds output_dir=$R/bench_other_kinds > logs/grow_bench_other.log 2>&1
# 4. vLLM serving the grown drafter on the same 8 held-out prompts as results/epyc_long_1207/vllm_bf16
export VLLM_CPU_KVCACHE_SPACE=2
t "vllm_check" "$VPY" scripts/vllm_check.py --drafter $NEW_RUN/drafter --dataset $OLD/dataset --prompts eval --max-new-tokens 128 \
    --dtype bf16 --k 3,4 --rounds 2 --out $R/vllm_bf16 > $R/vllm_bf16.log 2>&1
