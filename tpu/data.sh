#!/usr/bin/env bash
# Make task data from Cloud Storage available on every TPU worker: copy it, or mount it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE --src gs://BUCKET/PATH --dest DIR [options]

Every worker reads its own slice of the data, so each one needs the files locally.

Arguments:
$COMMON_USAGE
  --src URL          gs:// folder holding the task data (required)
  --dest DIR         folder on each worker to put (or mount) it in, e.g. data/agnews
                     (required; relative paths are under the home folder)
  --mode MODE        copy: 'gcloud storage rsync' the folder to local disk (default; best
                     for the small few-shot sets and for checkpoints of pretrained models);
                     mount: mount the bucket read-only with gcsfuse (for large unlabeled sets;
                     gcsfuse must be installed on the workers)
  --writable         with --mode mount: mount read-write, e.g. a bucket for launch.sh's
                     --output-dir, mounted at the same path on every worker

Example:
  $(basename "$0") --name pet-v4 --zone us-central2-b --src gs://my-bucket/pet/agnews \\
      --dest data/agnews
EOF
}

SRC=""
DEST=""
MODE="copy"
WRITABLE=0

split_equals "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  common_flag "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --src) need_value "$@"; SRC=$2; shift 2 ;;
    --dest) need_value "$@"; DEST=$2; shift 2 ;;
    --mode) need_value "$@"; MODE=$2; shift 2 ;;
    --writable) WRITABLE=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

check_target
require "$SRC" --src
require "$DEST" --dest
[[ $SRC =~ ^gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/[^\ \'\"]*)?$ ]] ||
  die "--src '$SRC' must be a gs://BUCKET[/PATH] URL"
[[ $DEST =~ ^[A-Za-z0-9_./~-]+$ ]] || die "--dest '$DEST' must be a plain path (letters, digits, ._-/~)"

if ((WRITABLE)) && [[ $MODE != mount ]]; then
  die "--writable only applies to --mode mount"
fi
case $MODE in
  copy)
    tpu_ssh all "mkdir -p $DEST && gcloud storage rsync --recursive ${SRC%/} $DEST"
    ;;
  mount)
    BUCKET=${SRC#gs://}
    BUCKET=${BUCKET%%/*}
    PREFIX=${SRC#gs://"$BUCKET"}
    PREFIX=${PREFIX#/}
    MOUNT="command -v gcsfuse >/dev/null || { echo 'gcsfuse is not installed on this worker' >&2; exit 1; }"
    MOUNT+=" && mkdir -p $DEST && gcsfuse"
    if ((!WRITABLE)); then MOUNT+=" -o ro"; fi
    MOUNT+=" --implicit-dirs"
    if [[ -n $PREFIX ]]; then MOUNT+=" --only-dir ${PREFIX%/}"; fi
    MOUNT+=" $BUCKET $DEST"
    tpu_ssh all "$MOUNT"
    ;;
  *) die "--mode must be copy or mount, not '$MODE'" ;;
esac
