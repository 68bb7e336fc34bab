#!/usr/bin/env bash
# Show or follow the train.py logs that launch.sh started on the TPU workers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $(basename "$0") --name NAME --zone ZONE [options]

Print the last lines of the workers' logs, and keep printing new lines with --follow.
Worker 0's log is usually enough: every worker runs the same steps, and jaxpet prints
progress from process 0 only; look at all workers when one of them failed.

Arguments:
$COMMON_USAGE
  --worker N|all     which worker's logs to show (default: 0)
  --run RUN          only the logs of run RUN (the last part of --output-dir given to
                     launch.sh; default: every run's logs)
  --lines N          how many of the last lines to print first (default: 50)
  --follow           keep printing new lines until interrupted (Ctrl-C)
  --dir DIR          jaxpet folder on the workers (default: jaxpet)
  --log-dir DIR      log folder, relative to --dir (default: logs)

Example:
  $(basename "$0") --name pet-v4 --zone us-central2-b --run agnews --follow
USAGE
}

WORKER=0
RUN=""
LINES=50
FOLLOW=0
DIR="jaxpet"
LOG_DIR="logs"

split_equals "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  common_flag "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --run) need_value "$@"; RUN=$2; shift 2 ;;
    --lines) need_value "$@"; LINES=$2; shift 2 ;;
    --follow) FOLLOW=1; shift ;;
    --dir) need_value "$@"; DIR=$2; shift 2 ;;
    --log-dir) need_value "$@"; LOG_DIR=$2; shift 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

check_target
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a number or 'all', not '$WORKER'"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number, not '$LINES'"
[[ $RUN =~ ^[A-Za-z0-9_.-]*$ ]] || die "--run '$RUN' must be a plain name"
[[ $DIR =~ ^[A-Za-z0-9_./~-]+$ ]] || die "--dir '$DIR' must be a plain path (letters, digits, ._-/~)"
[[ $LOG_DIR =~ ^[A-Za-z0-9_./~-]+$ ]] || die "--log-dir '$LOG_DIR' must be a plain path"

PATTERN="$DIR/$LOG_DIR/${RUN:+$RUN-}*.log"
TAIL="tail -n $LINES"
if ((FOLLOW)); then TAIL+=" -F"; fi
tpu_ssh "$WORKER" "$TAIL $PATTERN"
