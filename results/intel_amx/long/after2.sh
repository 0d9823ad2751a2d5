#!/usr/bin/env bash
# After after.sh: the long EAGLE-3 on a deeper tree than the cost model picks (acceptance length; gate off).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
R=results/intel_amx/long
while [ ! -f $R/after.done ]; do sleep 15; done
$PY decode/bench/run.py drafter=outputs/reproduce/eagle3/drafter max_new_tokens=128 num_prompts=24 \
    "methods=[target,selfspec]" decode.depth=6 decode.topk=8 decode.total_tokens=48 decode.adaptive=false \
    output_dir=$R/bench_eagle3_tree48 > $R/bench_eagle3_tree48.log 2>&1
echo done > $R/after2.done
