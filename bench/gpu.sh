#!/usr/bin/env bash
# The whole GPU comparison in one call (sized for under 8 minutes on one H100 or H200).
#
#   bash bench/gpu.sh [OUT_DIR]
#
# Writes peak.json, train_large_bf16.json, train_small_fp32.json, decode.json and generate.json
# to OUT_DIR (default: $OUT when set, else ./bench-results) and prints each table.
# Needs jax with CUDA, flax, optax, orbax-checkpoint, transformers and torch; nothing else.
set -euo pipefail

out_dir=${1:-${OUT:-bench-results}}
mkdir -p "$out_dir"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): python -m jaxpet.bench $*"
  timeout "$limit" python -m jaxpet.bench "$@" --json "$out_dir/$name.json" \
    || echo "!! $name failed or timed out (exit $?)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
run peak 30 peak --dtype bfloat16
run train_large_bf16 200 train --size large --seq-len 256 --batch-size 16 \
  --unlabeled-batch-size 16 --dtype bfloat16 --steps 10 --warmup 3 --compare torch
run train_small_fp32 60 train --size small --seq-len 128 --batch-size 8 \
  --unlabeled-batch-size 8 --steps 10 --compare torch
run decode 90 decode --num-examples 256 --k-max 1 4
run generate 60 generate --batch-size 32 --torch-device cuda
