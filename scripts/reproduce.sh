#!/usr/bin/env bash
# make reproduce   (or: bash scripts/reproduce.sh)
# The whole CPU pipeline behind the README's results, from a clean clone (about 11 hours on 2 CPU cores):
#   1. the long dataset: the target writes $LONG_PROMPTS prompts of its own and answers them (data/generate.py);
#   2. python train/run.py +experiment=X_long for X in $EXPERIMENTS, on that dataset (its target features are
#      stored once, by the first run, and reused by the others); drafters in $RUNS/X/drafter;
#   2b. the grown EAGLE-3 (stage "grow", long budget): a second dataset of $LONG_PROMPTS prompts that avoid the
#      first's, written by $GROW_PYTHON (a vLLM venv with GROW_DATA_ARGS=data.engine=vllm writes it 1.5x faster),
#      then eagle3_long trained twice over it from the long EAGLE-3's weights (train.init_from);
#   3. the quick-start EAGLE-3 (python train/run.py +experiment=eagle3, its own 768-prompt dataset);
#   4. one combined bench of every long drafter and the baselines on the long dataset's held-out prompts, and
#      another on the shipped prompt set of other kinds (code, math, two-turn), then the quick-start EAGLE-3 on
#      both sets; greedy, 128 new tokens, batch 1, the target's dtype (bf16 on a CPU with native bf16);
#   4b. the EAGLE-3 heads again at a 60-node tree (stage "wide"), the size the EAGLE papers report acceptance with;
#   5. the oracle drafter (the decoder's efficiency), the scaling curve of EAGLE-3 against training tokens
#      (the long run is its largest point), and economize on the same exported heads (if its venv exists);
#   6. results/*.md and *.png, and results/budget.md with the wall time of every stage.
# Knobs (environment): PYTHON, RUNS, RESULTS, EXPERIMENTS, LONG_PROMPTS, BENCH_PROMPTS, OTHER_PROMPTS, TRAIN_ARGS (extra Hydra
# overrides for every training run), ECONOMIZE_VENV, GROW_PYTHON, GROW_DATA_ARGS,
# SKIP (stage names to skip: grow quick wide scaling oracle economize).
# BUDGET=quick runs the same stages at the quick-start budget instead (about 1.5 hours): every family's quick
# experiment on the quick start's 768-prompt dataset, no separate quick stage, no scaling curve:
#   BUDGET=quick RESULTS=results/quick make reproduce
# A smoke test of the script itself:
#   TRAIN_ARGS="target=tiny_random train.max_steps=3 train.epochs=0" LONG_PROMPTS=16 BENCH_PROMPTS=2 \
#     SKIP="scaling economize" make reproduce
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
RUNS=${RUNS:-outputs/reproduce}
RESULTS=${RESULTS:-results}
EXPERIMENTS=${EXPERIMENTS:-eagle3 eagle medusa dflash draft}
BUDGET=${BUDGET:-long}
SKIP=${SKIP:-}
case $BUDGET in
    long) LONG_PROMPTS=${LONG_PROMPTS:-3072}; SUFFIX=_long ;;
    quick) LONG_PROMPTS=${LONG_PROMPTS:-768}; SUFFIX=; SKIP="$SKIP quick scaling grow" ;;
    *) echo "BUDGET must be long or quick, not '$BUDGET'" >&2; exit 2 ;;
esac
BENCH_PROMPTS=${BENCH_PROMPTS:-24}
OTHER_PROMPTS=${OTHER_PROMPTS:-null}  # null: all 48 of the shipped other-kinds set
TRAIN_ARGS=${TRAIN_ARGS:-}
ECONOMIZE_VENV=${ECONOMIZE_VENV:-/work/venvs/economize}
GROW_PYTHON=${GROW_PYTHON:-$PYTHON}
GROW_DATA_ARGS=${GROW_DATA_ARGS:-}
TITLE="SmolLM2-135M-Instruct target on a 2-core CPU"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline}

mkdir -p "$RESULTS" "$RUNS"
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
skipped() { [[ " $SKIP " == *" $1 "* ]]; }

# The data stages take the overrides of TRAIN_ARGS that name the dataset (target, data, seed), so that the training
# runs find the dataset they wrote under the same key.
DATA_ARGS=()
for a in $TRAIN_ARGS; do
    case $a in target=* | target.* | +target.* | data.* | +data.* | seed=*) DATA_ARGS+=("$a") ;; esac
done
stage "data ($LONG_PROMPTS prompts)" "$PYTHON" data/generate.py "data.num_prompts=$LONG_PROMPTS" \
    "output_dir=$RUNS/data" "${DATA_ARGS[@]}"
drafters=()
for x in $EXPERIMENTS; do
    # shellcheck disable=SC2086
    stage "train ${x}${SUFFIX}" "$PYTHON" train/run.py "+experiment=${x}${SUFFIX}" "data.num_prompts=$LONG_PROMPTS" \
        "output_dir=$RUNS/$x" train.report=false $TRAIN_ARGS
    drafters+=("$RUNS/$x/drafter")
done
if ! skipped grow && [[ " $EXPERIMENTS " == *" eagle3 "* ]]; then  # BUDGET=quick skips grow
    # Grow the long EAGLE-3: a second dataset whose prompts avoid the first's (so the first's eval split, where the
    # bench runs, stays held out from both), then the same recipe twice over it from the long head's weights.
    first=$(dirname "$(readlink -f "$RUNS/data/dataset")")
    grow=("data.num_prompts=$LONG_PROMPTS" "data.magpie.avoid=[$first]")
    # shellcheck disable=SC2086  # GROW_DATA_ARGS: Hydra overrides for the second dataset (e.g. data.engine=vllm)
    stage "data, second ($LONG_PROMPTS prompts avoiding the first's)" "$GROW_PYTHON" data/generate.py "${grow[@]}" \
        "output_dir=$RUNS/data_grow" $GROW_DATA_ARGS "${DATA_ARGS[@]}"
    # shellcheck disable=SC2086
    stage "train eagle3_long, grown" "$PYTHON" train/run.py +experiment=eagle3_long "${grow[@]}" $GROW_DATA_ARGS \
        "train.init_from=$RUNS/eagle3/drafter" train.epochs=2 "output_dir=$RUNS/eagle3_grow" train.report=false \
        $TRAIN_ARGS
    drafters+=("$RUNS/eagle3_grow/drafter")
fi
list=$(IFS=,; echo "${drafters[*]}")
bench=(decode/bench/run.py "max_new_tokens=128" "num_prompts=$BENCH_PROMPTS")
stage "bench, held-out prompts" "$PYTHON" "${bench[@]}" "drafter=[$list]" "output_dir=$RESULTS/bench"
stage "bench, other kinds" "$PYTHON" "${bench[@]}" "drafter=[$list]" prompts=other_kinds \
    "num_prompts=$OTHER_PROMPTS" "output_dir=$RESULTS/bench_other_kinds"

if ! skipped quick; then
    # shellcheck disable=SC2086
    stage "train eagle3 (quick start)" "$PYTHON" train/run.py +experiment=eagle3 "output_dir=$RUNS/eagle3_quick" \
        train.report=false $TRAIN_ARGS
    quick=("drafter=$RUNS/eagle3_quick/drafter" "methods=[target,selfspec]")
    stage "bench quick eagle3, held-out" "$PYTHON" "${bench[@]}" "${quick[@]}" "output_dir=$RESULTS/quick/bench"
    stage "bench quick eagle3, other kinds" "$PYTHON" "${bench[@]}" "${quick[@]}" prompts=other_kinds \
        num_prompts=null "output_dir=$RESULTS/quick/bench_other_kinds"
fi
if ! skipped wide && [[ " $EXPERIMENTS " == *" eagle3 "* ]]; then
    # The EAGLE-3 heads at a tree of the size the EAGLE-2/3 papers measure acceptance with (60 nodes, top-10,
    # depth 6), every step drafted: the acceptance length their figures compare with. tree=auto picks a far
    # smaller tree on a 2-core CPU, where verifying 60 nodes costs about 2x a 1-token forward.
    heads=("$RUNS/eagle3/drafter")
    for d in "$RUNS/eagle3_grow/drafter" "$RUNS/eagle3_quick/drafter"; do [ -d "$d" ] && heads+=("$d"); done
    wide=("drafter=[$(IFS=,; echo "${heads[*]}")]" "methods=[target,selfspec]" decode.depth=6 decode.topk=10
          decode.total_tokens=60 decode.adaptive=false)
    stage "bench eagle3 heads, 60-node tree, held-out" "$PYTHON" "${bench[@]}" "${wide[@]}" \
        "output_dir=$RESULTS/wide_tree/bench"
    stage "bench eagle3 heads, 60-node tree, other kinds" "$PYTHON" "${bench[@]}" "${wide[@]}" prompts=other_kinds \
        "num_prompts=$OTHER_PROMPTS" "output_dir=$RESULTS/wide_tree/bench_other_kinds"
fi
if ! skipped oracle; then
    stage "oracle drafter" bash -c "'$PYTHON' decode/bench/oracle.py > '$RESULTS/oracle.md'"
fi
if ! skipped scaling; then
    # shellcheck disable=SC2086
    stage "scaling curve" "$PYTHON" scripts/scaling.py --runs "$RUNS/scaling" --out "$RESULTS/scaling" \
        --reuse "$((LONG_PROMPTS * 9 / 10))=$RUNS/eagle3" -- "data.num_prompts=$LONG_PROMPTS" $TRAIN_ARGS
fi
if ! skipped economize && [ -x "$ECONOMIZE_VENV/bin/python" ]; then
    stage "economize" bash -c "'$PYTHON' scripts/economize_compare.py --venv '$ECONOMIZE_VENV' \
        --drafter '$RUNS/eagle3/drafter' --drafter '$RUNS/medusa/drafter' > '$RESULTS/economize.md'"
fi

stage "tables" "$PYTHON" scripts/merge_bench.py "$RESULTS/README_table.md" "$RESULTS/bench/bench.json" \
    --title "Held-out prompts (the $BUDGET budget's eval split): $TITLE"
"$PYTHON" scripts/merge_bench.py "$RESULTS/other_kinds_table.md" "$RESULTS/bench_other_kinds/bench.json" \
    --title "Prompts of other kinds (code, math, two-turn; never trained on): $TITLE"
cp "$RESULTS/bench/acceptance.png" "$RESULTS/acceptance.png"

printf '| **total** | **%d** |\n' "$(( $(date +%s) - t_all ))" >> "$budget.tmp"
mv "$budget.tmp" "$budget"
echo "== done: $RESULTS/README_table.md, $RESULTS/other_kinds_table.md, $budget" >&2
cat "$budget"
