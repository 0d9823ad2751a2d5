#!/usr/bin/env bash
# make reproduce   (or: bash scripts/reproduce.sh)
# The whole CPU pipeline behind the README's results table, from a clean clone:
#   1. python train/run.py +experiment=X for X in medusa eagle eagle3 dflash draft (each: the target writes its data,
#      the drafter trains, is exported to $RUNS/X/drafter, and its own report lands in $RUNS/X/report);
#   2. one combined bench: every drafter and the baselines on the same held-out prompts, interleaved;
#   3. results/README_table.md (+ .json) from the combined bench, results/train_reports.md from the per-run
#      reports, results/acceptance.png, and results/budget.md with the wall time of every stage.
# Budget: aim under 2 hours on 2 CPU cores with the defaults (embedded SmolLM2-135M-Instruct target).
# Knobs (environment): PYTHON, RUNS, RESULTS, EXPERIMENTS, TITLE, TRAIN_ARGS (extra Hydra overrides for every
# training run), BENCH_ARGS (for the combined bench), e.g. a smoke test of the script itself:
#   TRAIN_ARGS="target=tiny_random data.num_prompts=16 train.max_steps=5" BENCH_ARGS="num_prompts=2" make reproduce
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
RUNS=${RUNS:-outputs/reproduce}
RESULTS=${RESULTS:-results}
EXPERIMENTS=${EXPERIMENTS:-medusa eagle eagle3 dflash draft}
TRAIN_ARGS=${TRAIN_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:-num_prompts=null max_new_tokens=128}  # every held-out prompt (6 of 64 by default)
TITLE=${TITLE:-Results: SmolLM2-135M-Instruct target on a 2-core CPU}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline}

mkdir -p "$RESULTS"
budget="$RESULTS/budget.md"
printf '| stage | wall time (s) |\n|---|---:|\n' > "$budget.tmp"
t_all=$(date +%s)
stage() {  # stage NAME COMMAND...: run, time, and log a row of the budget table
    local name=$1; shift
    echo "== $name: $*" >&2
    local t0; t0=$(date +%s)
    "$@"
    printf '| %s | %d |\n' "$name" "$(( $(date +%s) - t0 ))" >> "$budget.tmp"
}

drafters=()
reports=()
for x in $EXPERIMENTS; do
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of Hydra overrides
    stage "train $x" "$PYTHON" train/run.py "+experiment=$x" "output_dir=$RUNS/$x" $TRAIN_ARGS
    drafters+=("$RUNS/$x/drafter")
    [ -f "$RUNS/$x/report/bench.json" ] && reports+=("$RUNS/$x/report/bench.json")
done

list=$(IFS=,; echo "${drafters[*]}")
# shellcheck disable=SC2086
stage "combined bench" "$PYTHON" decode/bench/run.py "drafter=[$list]" "output_dir=$RESULTS/bench" $BENCH_ARGS
stage "tables" "$PYTHON" scripts/merge_bench.py "$RESULTS/README_table.md" "$RESULTS/bench/bench.json" \
    --title "$TITLE"
cp "$RESULTS/bench/acceptance.png" "$RESULTS/acceptance.png"
if [ ${#reports[@]} -gt 0 ]; then
    "$PYTHON" scripts/merge_bench.py "$RESULTS/train_reports.md" "${reports[@]}" \
        --title "Reports printed at the end of each training run"
fi

printf '| **total** | **%d** |\n' "$(( $(date +%s) - t_all ))" >> "$budget.tmp"
mv "$budget.tmp" "$budget"
echo "== done: $RESULTS/README_table.md, $budget" >&2
cat "$budget"
