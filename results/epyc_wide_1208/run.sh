#!/usr/bin/env bash
# 2026-12-08 small hours, the 2-core AMD EPYC with avx512_bf16 (bf16): mean accepted tokens of the EAGLE-3 heads
# at a tree of the size the EAGLE-2/3 papers evaluate with (60 nodes, top-10, depth 6; the gate off, so every step
# drafts) on the held-out and the other-kinds prompts. The first ran beside a training job and the test suite
# (read its acceptance, not its speed); the other three ran alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python} R=results/epyc_wide_1208
FIRST=$HOME/.cache/selfspec/datasets/smollm2-135m-instruct-self-5753e69404465a08
QUICK=${QUICK:-/tmp/clean/outputs/eagle3}  # the quick start's head (python train/run.py +experiment=eagle3)
wide=(decode/bench/run.py max_new_tokens=128 "methods=[target,selfspec]" decode.depth=6 decode.topk=10
      decode.total_tokens=60 decode.adaptive=false)
"$PY" "${wide[@]}" drafter=outputs/eagle3_grow3/drafter num_prompts=24 dataset=$FIRST/dataset output_dir=$R/grow3_held_out
"$PY" "${wide[@]}" drafter=outputs/eagle3_grow3/drafter num_prompts=24 prompts=other_kinds output_dir=$R/grow3_other_kinds
"$PY" "${wide[@]}" drafter=$QUICK/drafter num_prompts=24 output_dir=$R/quick_held_out
"$PY" "${wide[@]}" drafter=$QUICK/drafter num_prompts=24 prompts=other_kinds output_dir=$R/quick_other_kinds
