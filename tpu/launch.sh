#!/usr/bin/env bash
# Start train.py on every worker of a TPU VM or pod slice at once, in the background.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE --config FILE --output-dir DIR [options] \\
           [-- key=value ...]

Run 'python train.py --config FILE output_dir=DIR key=value ...' on all workers together
(every worker must run the same program), with JAXPET_DISTRIBUTED=1 so that each process
calls jax.distributed.initialize(), which finds its peers on Cloud TPU by itself. Each
worker runs under nohup and writes its own log, LOG_DIR/RUN-worker-N.log (RUN is the last
part of --output-dir, N the worker number); follow them with logs.sh.

Arguments:
$COMMON_USAGE
  --config FILE      experiment config, relative to the jaxpet folder (required)
  --output-dir DIR   where results and checkpoints go (required): a gs:// URL, or an
                     absolute path on storage that all workers share (NFS, Filestore); a
                     worker-local path would split one run's outputs over the hosts
  --dir DIR          jaxpet folder on the workers, as given to setup.sh (default: jaxpet)
  --log-dir DIR      log folder on each worker, relative to --dir (default: logs)
  --env KEY=VALUE    extra environment variable for train.py; may be repeated
  -- key=value ...   config overrides passed on to train.py (e.g. mesh.fsdp=4)

Example:
  $(basename "$0") --name pet-v4 --zone us-central2-b --config configs/agnews_pet.yaml \\
      --output-dir gs://my-bucket/runs/agnews -- mesh.fsdp=4 model.remat=true
EOF
}

CONFIG=""
OUTPUT_DIR=""
DIR="jaxpet"
LOG_DIR="logs"
ENVS=()
OVERRIDES=()

split_equals "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    OVERRIDES=("$@")
    break
  fi
  common_flag "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --output-dir) need_value "$@"; OUTPUT_DIR=$2; shift 2 ;;
    --dir) need_value "$@"; DIR=$2; shift 2 ;;
    --log-dir) need_value "$@"; LOG_DIR=$2; shift 2 ;;
    --env) need_value "$@"; ENVS+=("$2"); shift 2 ;;
    *) die "unknown argument '$1' (config overrides go after '--')" ;;
  esac
done

check_target
require "$CONFIG" --config
require "$OUTPUT_DIR" --output-dir
if [[ $OUTPUT_DIR != gs://* && $OUTPUT_DIR != /* ]]; then
  die "--output-dir '$OUTPUT_DIR' must be a gs:// URL or an absolute path on shared storage"
fi
[[ $DIR =~ ^[A-Za-z0-9_./~-]+$ ]] || die "--dir '$DIR' must be a plain path (letters, digits, ._-/~)"
[[ $LOG_DIR =~ ^[A-Za-z0-9_./~-]+$ ]] || die "--log-dir '$LOG_DIR' must be a plain path"
for pair in "${ENVS[@]+"${ENVS[@]}"}"; do
  [[ $pair =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$pair' is not KEY=VALUE"
done
for override in "${OVERRIDES[@]+"${OVERRIDES[@]}"}"; do
  [[ $override == *=* ]] || die "config override '$override' is not key=value"
  [[ $override != output_dir=* ]] || die "give the output folder with --output-dir, not as an override"
done

RUN=$(basename "${OUTPUT_DIR%/}")
ENV_WORDS="JAXPET_DISTRIBUTED=1"
for pair in "${ENVS[@]+"${ENVS[@]}"}"; do
  ENV_WORDS+=" ${pair%%=*}=$(quote_arg "${pair#*=}")"
done
TRAIN=".venv/bin/python train.py --config $(quote_arg "$CONFIG") $(quote_arg "output_dir=$OUTPUT_DIR")"
for override in "${OVERRIDES[@]+"${OVERRIDES[@]}"}"; do
  TRAIN+=" $(quote_arg "$override")"
done
# shellcheck disable=SC2016  # expanded on the worker, not here
# The worker number comes from the TPU VM's metadata server (hostname as a fallback).
WORKER='W=$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
LOG="$LOG_DIR/$RUN-worker-\$W.log"
# `|| exit 1;` rather than `&&`: an AND-list ending in `&` would run wholly in the background.
REMOTE="cd $DIR && mkdir -p $LOG_DIR && $WORKER || exit 1;"
REMOTE+=" $ENV_WORDS nohup $TRAIN > $LOG 2>&1 < /dev/null &"
REMOTE+=" echo \"worker \$W: pid \$!, log $DIR/$LOG\""
tpu_ssh all "$REMOTE"
