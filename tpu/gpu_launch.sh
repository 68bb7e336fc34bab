#!/usr/bin/env bash
# Start train.py on a multi-GPU host, as one process per host or one process per GPU.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $(basename "$0") --config FILE --output-dir DIR [options] [-- key=value ...]

Run this script once on every GPU host, with the same arguments except --host-index.
It starts train.py with the environment that jax.distributed.initialize() reads, so all
processes of all hosts form one JAX program:

  JAXPET_DISTRIBUTED=1       jaxpet calls jax.distributed.initialize() before using JAX
  JAX_COORDINATOR_ADDRESS    host:port of process 0's coordinator service (JAX reads it)
  JAX_NUM_PROCESSES          number of processes over all hosts
  JAX_PROCESS_ID             this process's number, 0 .. JAX_NUM_PROCESSES-1
  JAX_LOCAL_DEVICE_IDS       GPUs this process drives, comma-separated (JAX reads it)

per-host mode (default) starts one process that drives all of the host's GPUs; this is
what JAX recommends on GPU. per-gpu mode starts one process per GPU (process id =
host index x GPUs per host + GPU number). Each process writes LOG_DIR/RUN-process-ID.log
under nohup; the script waits for its processes and fails if any of them fails.
With --config-keys the same values also go to train.py as distributed.* overrides.

Arguments:
  --config FILE        experiment config (required)
  --output-dir DIR     results and checkpoints (required); with several hosts, a folder
                       all hosts share (NFS) or a gs:// URL
  --num-hosts N        hosts taking part (default: 1)
  --host-index I       this host's number, 0 .. N-1; host 0 runs the coordinator
                       (default: 0)
  --coordinator ADDR   host:port of host 0, reachable from every host (required with
                       several hosts; default with one host: localhost:12355)
  --mode MODE          per-host or per-gpu (default: per-host)
  --gpus N             GPUs on each host (default: counted with nvidia-smi -L)
  --python PATH        Python to run train.py with (default: .venv/bin/python)
  --log-dir DIR        folder for the per-process logs (default: logs)
  --config-keys        also pass distributed.enabled/coordinator_address/num_processes/
                       process_id/local_device_ids as config overrides
  --no-wait            start the processes and return at once (follow the logs)
  --dry-run            print every command instead of running it
  -h, --help           show this help and exit
  -- key=value ...     config overrides passed on to train.py

Example (two hosts with 8 GPUs each; on the second host use --host-index 1):
  $(basename "$0") --config configs/agnews_pet.yaml --output-dir /shared/runs/agnews \\
      --num-hosts 2 --host-index 0 --coordinator 10.0.0.2:12355 -- mesh.fsdp=8
USAGE
}

CONFIG=""
OUTPUT_DIR=""
NUM_HOSTS=1
HOST_INDEX=0
COORDINATOR=""
MODE="per-host"
GPUS=""
PYTHON=".venv/bin/python"
LOG_DIR="logs"
CONFIG_KEYS=0
WAIT=1
OVERRIDES=()

split_equals "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case $1 in
    --) shift; OVERRIDES=("$@"); break ;;
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --output-dir) need_value "$@"; OUTPUT_DIR=$2; shift 2 ;;
    --num-hosts) need_value "$@"; NUM_HOSTS=$2; shift 2 ;;
    --host-index) need_value "$@"; HOST_INDEX=$2; shift 2 ;;
    --coordinator) need_value "$@"; COORDINATOR=$2; shift 2 ;;
    --mode) need_value "$@"; MODE=$2; shift 2 ;;
    --gpus) need_value "$@"; GPUS=$2; shift 2 ;;
    --python) need_value "$@"; PYTHON=$2; shift 2 ;;
    --log-dir) need_value "$@"; LOG_DIR=$2; shift 2 ;;
    --config-keys) CONFIG_KEYS=1; shift ;;
    --no-wait) WAIT=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (config overrides go after '--')" ;;
  esac
done

require "$CONFIG" --config
require "$OUTPUT_DIR" --output-dir
[[ $NUM_HOSTS =~ ^[1-9][0-9]*$ ]] || die "--num-hosts must be a positive number, not '$NUM_HOSTS'"
if ! [[ $HOST_INDEX =~ ^[0-9]+$ ]] || ((HOST_INDEX >= NUM_HOSTS)); then
  die "--host-index must be a number in 0 .. $((NUM_HOSTS - 1)), not '$HOST_INDEX'"
fi
if [[ -z $COORDINATOR ]]; then
  ((NUM_HOSTS == 1)) || die "missing required argument --coordinator (host 0's address:port) with several hosts"
  COORDINATOR="localhost:12355"
fi
[[ $COORDINATOR =~ ^[^:\ ]+:[0-9]+$ ]] || die "--coordinator '$COORDINATOR' is not host:port"
[[ $MODE == per-host || $MODE == per-gpu ]] || die "--mode must be per-host or per-gpu, not '$MODE'"
if [[ -z $GPUS ]]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: give the number of GPUs with --gpus"
  GPUS=$(nvidia-smi -L | grep -c '^GPU')
fi
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive number, not '$GPUS'"
for override in "${OVERRIDES[@]+"${OVERRIDES[@]}"}"; do
  [[ $override == *=* ]] || die "config override '$override' is not key=value"
done

RUN=$(basename "${OUTPUT_DIR%/}")
if [[ $MODE == per-host ]]; then
  NUM_PROCESSES=$NUM_HOSTS
  PER_PROCESS=$GPUS
else
  NUM_PROCESSES=$((NUM_HOSTS * GPUS))
  PER_PROCESS=1
fi
run mkdir -p "$LOG_DIR"

PIDS=()
for ((local_rank = 0; local_rank < GPUS / PER_PROCESS; local_rank++)); do
  process_id=$((HOST_INDEX * (GPUS / PER_PROCESS) + local_rank))
  first=$((local_rank * PER_PROCESS))
  device_ids=$(seq -s, "$first" $((first + PER_PROCESS - 1)))
  CMD=(env JAXPET_DISTRIBUTED=1 "JAX_COORDINATOR_ADDRESS=$COORDINATOR"
    "JAX_NUM_PROCESSES=$NUM_PROCESSES" "JAX_PROCESS_ID=$process_id"
    "JAX_LOCAL_DEVICE_IDS=$device_ids"
    "$PYTHON" train.py --config "$CONFIG" "output_dir=$OUTPUT_DIR")
  if ((CONFIG_KEYS)); then
    CMD+=(distributed.enabled=true "distributed.coordinator_address=$COORDINATOR"
      "distributed.num_processes=$NUM_PROCESSES" "distributed.process_id=$process_id"
      "distributed.local_device_ids=[$device_ids]")
  fi
  CMD+=("${OVERRIDES[@]+"${OVERRIDES[@]}"}")
  log="$LOG_DIR/$RUN-process-$process_id.log"
  if ((DRY_RUN)); then
    echo "$(print_cmd nohup "${CMD[@]}") > $(quote_arg "$log") 2>&1 &"
  else
    nohup "${CMD[@]}" >"$log" 2>&1 </dev/null &
    PIDS+=("$!")
    echo "process $process_id (GPUs $device_ids): pid $!, log $log"
  fi
done

if ((WAIT && !DRY_RUN)); then
  status=0
  for pid in "${PIDS[@]}"; do
    wait "$pid" || status=$?
  done
  exit "$status"
fi
