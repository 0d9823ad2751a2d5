#!/usr/bin/env bash
# 2026-12-07 late night, the 2-core AMD EPYC with avx512_bf16 (bf16): economize against the grown EAGLE-3 and the
# quick Medusa head, then a third self-written dataset from vLLM (its prompts avoid both earlier datasets') grows the
# grown EAGLE-3 of results/epyc_grow_1207 once more, benched beside it on the first dataset's held-out prompts and
# the other kinds, and with a deeper tree than the cost model picks. Each stage alone on the machine, in this order.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python} VPY=${VPY:-/work/venvs/vllm/bin/python}
R=results/epyc_grow3_1207 GROWN=outputs/eagle3_grow NEW_RUN=outputs/eagle3_grow3
D=$HOME/.cache/selfspec/datasets
FIRST=$D/smollm2-135m-instruct-self-5753e69404465a08 SECOND=$D/smollm2-135m-instruct-self-fec0a09741d952f3
export VLLM_CPU_KVCACHE_SPACE=4 HF_HUB_OFFLINE=1
STAGES=${STAGES:-"1 2 3 4 5"}  # this session ran 1 and 2 by hand (same commands), then STAGES="3 4 5"
[ -f $R/budget.md ] || { echo "| stage | wall time (s) |" > $R/budget.md; echo "|---|---:|" >> $R/budget.md; }
t() { local s=$SECONDS label=$1; shift; "$@"; echo "| $label | $((SECONDS - s)) |" >> $R/budget.md; }
on() { [[ " $STAGES " == *" $1 "* ]]; }
# 1. selfspec against economize 0.3.2 on the same exported heads (8 held-out prompts of each head's dataset)
on 1 && t "economize, grown eagle3" bash -c "$PY scripts/economize_compare.py --drafter $GROWN/drafter --cycles 3,4,5 > $R/economize_eagle3.md"
on 1 && t "economize, quick medusa" bash -c "$PY scripts/economize_compare.py --drafter outputs/quick/medusa/drafter --cycles 2,3 > $R/economize_medusa.md"
# 2. the third dataset: 3072 Magpie prompts (seed 3) through vLLM, none a near duplicate of the first two datasets'
data=(data.num_prompts=3072 data.engine=vllm "data.magpie.avoid=[$FIRST,$SECOND]" +data.vllm.kwargs.enable_chunked_prefill=false seed=3)
on 2 && t "data, third" "$VPY" data/generate.py "${data[@]}" output_dir=outputs/data-vllm-3 > logs/data_vllm3.log 2>&1
# 3. the grown head goes on over the third dataset, twice, same recipe
on 3 && t "train eagle3_grow3" "$PY" train/run.py +experiment=eagle3_long "${data[@]}" train.init_from=$GROWN/drafter train.epochs=2 \
    output_dir=$NEW_RUN > logs/grow3_train.log 2>&1
# 4. both grown heads in one bench: the first dataset's 24 held-out prompts (as in results/epyc_grow_1207), other kinds
bench=(decode/bench/run.py max_new_tokens=128 num_prompts=24 "drafter=[$GROWN/drafter,$NEW_RUN/drafter]")
on 4 && t "bench, held-out" "$PY" "${bench[@]}" dataset=$FIRST/dataset output_dir=$R/bench > logs/grow3_bench.log 2>&1
on 4 && t "bench, other kinds" "$PY" "${bench[@]}" prompts=other_kinds output_dir=$R/bench_other_kinds > logs/grow3_bench_other.log 2>&1
# 5. a deeper tree than the cost model picks, gate off: the acceptance length a bigger verification buys
on 5 && t "bench, deep tree" "$PY" decode/bench/run.py drafter=$NEW_RUN/drafter max_new_tokens=128 num_prompts=24 \
    dataset=$FIRST/dataset "methods=[target,selfspec]" decode.depth=6 decode.topk=8 decode.total_tokens=48 \
    decode.adaptive=false output_dir=$R/bench_tree48 > logs/grow3_tree48.log 2>&1
