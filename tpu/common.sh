# shellcheck shell=bash
# Helpers sourced by the tpu/ scripts: argument checks, --dry-run, and gcloud TPU VM wrappers.
#
# A script sets DRY_RUN=1 for --dry-run; then `run` prints each command, one per line, in
# shell quoting (a line can be pasted into a shell), instead of running it.

set -euo pipefail

DRY_RUN=${DRY_RUN:-0}
NAME=""
ZONE=""
PROJECT=""

# Print an error and the hint to --help, then exit 2 (a usage error).
die() {
  echo "$(basename "$0"): error: $*" >&2
  echo "Run '$(basename "$0") --help' for the arguments." >&2
  exit 2
}

# Quote one argument for display the way a shell would read it back.
quote_arg() {
  local arg=$1
  if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$arg"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

# Print a command line, quoted.
print_cmd() {
  local first=1 arg
  for arg in "$@"; do
    if ((first)); then first=0; else printf ' '; fi
    quote_arg "$arg"
  done
  printf '\n'
}

# Run a command, or print it under --dry-run.
run() {
  if ((DRY_RUN)); then
    print_cmd "$@"
  else
    "$@"
  fi
}

# `need_value "$@"` (with $1 the flag): the flag must be followed by a value, not a flag.
need_value() {
  local flag=$1
  shift
  if (($# < 1)) || [[ $1 == --* ]]; then
    die "$flag needs a value"
  fi
}

# `require VALUE FLAG`: a required argument must have been given.
require() {
  [[ -n $1 ]] || die "missing required argument $2"
}

# Split --flag=value into --flag value; the result is in the array ARGS.
split_equals() {
  ARGS=()
  local arg
  for arg in "$@"; do
    if [[ $arg == --*=* ]]; then
      ARGS+=("${arg%%=*}" "${arg#*=}")
    else
      ARGS+=("$arg")
    fi
  done
}

# `common_flag "$@"`: parse one shared flag; sets SHIFT to the words used (0: not shared).
# The calling script defines `usage`.
# shellcheck disable=SC2034  # SHIFT is read by the calling script
common_flag() {
  SHIFT=0
  case $1 in
    --name) need_value "$@"; NAME=$2; SHIFT=2 ;;
    --zone) need_value "$@"; ZONE=$2; SHIFT=2 ;;
    --project) need_value "$@"; PROJECT=$2; SHIFT=2 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
  esac
}

# Check --name / --zone (and --project when given) after parsing.
check_target() {
  require "$NAME" --name
  require "$ZONE" --zone
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name '$NAME' is not a valid TPU name (lowercase letters, digits and '-')"
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die "--zone '$ZONE' does not look like a zone (e.g. us-central2-b)"
}

# The flags every gcloud TPU VM command takes.
location_flags() {
  LOCATION=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=("--project=$PROJECT")
  fi
}

# `tpu_ssh WORKER COMMAND`: run COMMAND on one worker (0, 1, ...) or on all at once.
tpu_ssh() {
  local worker=$1 command=$2
  location_flags
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" "--worker=$worker" \
    "--command=$command"
}

# `tpu_scp SOURCE DEST_PATH`: copy a local file to DEST_PATH on every worker.
tpu_scp() {
  local source=$1 dest=$2
  location_flags
  run gcloud compute tpus tpu-vm scp "$source" "$NAME:$dest" "${LOCATION[@]}" --worker=all
}

# The common arguments, for the usage texts.
# shellcheck disable=SC2034  # used by the scripts that source this file
COMMON_USAGE="  --name NAME        TPU VM or pod-slice name (required)
  --zone ZONE        zone of the TPU, e.g. us-central2-b (required)
  --project PROJECT  Google Cloud project (default: gcloud's configured project)
  --dry-run          print every command instead of running it
  -h, --help         show this help and exit"
