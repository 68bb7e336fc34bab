#!/usr/bin/env bash
# The whole GPU comparison in one call (sized for under 8 minutes on one H100 or H200).
#
#   bash bench/gpu.sh [OUT_DIR [NAME ...]]
#
# Writes one JSON report per benchmark (the names at the bottom) to OUT_DIR
# (default: $OUT when set, else ./bench-results) and prints each table. NAMEs run only those
# benchmarks, in the order given. Most important first, so a call cut short keeps the
# headline numbers. Needs jax with CUDA, flax, optax, orbax-checkpoint, transformers and
# torch; nothing else.
set -euo pipefail

out_dir=${1:-${OUT:-bench-results}}
shift || true
mkdir -p "$out_dir"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

large=(train --size large --seq-len 256 --dtype bfloat16 --steps 10 --warmup 3)
declare -A limit=(
  [peak]=30 [train_large_bf16]=200 [train_large_bf16_profile]=90 [train_large_bf16_rbg]=90
  [train_large_bf16_b64]=90 [train_large_bf16_no_dropout]=90 [train_large_bf16_attn_xla]=90
  [train_large_bf16_attn_cudnn]=90 [train_large_bf16_attn_cudnn_b64]=90
  [train_small_fp32]=60 [decode]=90 [generate]=60
)
args_of() {
  case $1 in
    peak) echo peak --dtype bfloat16 ;;
    # the headline: RoBERTa-large PET step against both PyTorch ways
    train_large_bf16) echo "${large[@]}" --batch-size 16 --unlabeled-batch-size 16 \
      --compare torch ;;
    # where jaxpet's step spends its time, by op category
    train_large_bf16_profile) echo "${large[@]}" --batch-size 16 --unlabeled-batch-size 16 \
      --steps 5 --profile 3 ;;
    # the same step with XLA's RngBitGenerator keys for dropout instead of threefry
    train_large_bf16_rbg) echo "${large[@]}" --batch-size 16 --unlabeled-batch-size 16 \
      --prng-impl unsafe_rbg ;;
    # twice the rows per step
    train_large_bf16_b64) echo "${large[@]}" --batch-size 32 --unlabeled-batch-size 32 ;;
    # what dropout costs: none at all, then hidden dropout only (XLA attention, then cuDNN's
    # flash attention, which has no attention-probability dropout)
    train_large_bf16_no_dropout) echo "${large[@]}" --batch-size 16 --unlabeled-batch-size 16 \
      --dropout 0 ;;
    train_large_bf16_attn_xla) echo "${large[@]}" --batch-size 16 --unlabeled-batch-size 16 \
      --attention-dropout 0 ;;
    train_large_bf16_attn_cudnn) echo "${large[@]}" --batch-size 16 --unlabeled-batch-size 16 \
      --attention-dropout 0 --attention cudnn ;;
    train_large_bf16_attn_cudnn_b64) echo "${large[@]}" --batch-size 32 \
      --unlabeled-batch-size 32 --attention-dropout 0 --attention cudnn ;;
    train_small_fp32) echo train --size small --seq-len 128 --batch-size 8 \
      --unlabeled-batch-size 8 --steps 10 --compare torch ;;
    decode) echo decode --num-examples 256 --k-max 1 4 ;;
    generate) echo generate --batch-size 32 --torch-device cuda ;;
    *) echo "unknown benchmark $1" >&2; return 1 ;;
  esac
}

run() {
  local name=$1 args
  args=$(args_of "$name") || return 0
  local xla_flags=${XLA_FLAGS:-}
  # CUDA command buffers run many ops as one graph node; the profile needs each op by name
  [ "$name" = train_large_bf16_profile ] && xla_flags="$xla_flags --xla_gpu_enable_command_buffer="
  echo "== $name (limit ${limit[$name]}s): python -m jaxpet.bench $args"
  # shellcheck disable=SC2086  # args_of prints one argument per word
  XLA_FLAGS=$xla_flags timeout "${limit[$name]}" python -m jaxpet.bench $args \
    --json "$out_dir/$name.json" \
    || echo "!! $name failed or timed out (exit $?)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(peak train_large_bf16 train_large_bf16_profile train_large_bf16_rbg
         train_large_bf16_b64 train_large_bf16_no_dropout train_large_bf16_attn_xla
         train_large_bf16_attn_cudnn train_large_bf16_attn_cudnn_b64 train_small_fp32 decode
         generate)
fi
for name in "${names[@]}"; do
  run "$name"
done
