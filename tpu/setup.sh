#!/usr/bin/env bash
# Install jaxpet and JAX for TPU on every worker of a TPU VM or pod slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE (--repo URL | --source DIR) [options]

Put the jaxpet code on every worker (git clone, or a copy of a local checkout), make a
virtual environment there and pip-install jaxpet with jax[tpu]. Every worker of a pod
slice must hold the same code: train.py runs on all of them at once.

Arguments:
$COMMON_USAGE
  --repo URL         git URL to clone on each worker (one of --repo / --source)
  --ref REF          branch or tag to check out with --repo (default: main)
  --source DIR       local checkout to copy to each worker instead (without .git, .venv
                     and runs/)
  --dir DIR          folder on the workers (default: jaxpet, under the home folder)
  --jax SPEC         pip requirement for JAX (default: 'jax[tpu]>=0.10.2')
  --extras EXTRAS    jaxpet extras to install, e.g. tensorboard (default: none)

Example:
  $(basename "$0") --name pet-v4 --zone us-central2-b --repo https://github.com/ORG/jaxpet
EOF
}

REPO=""
REF="main"
SOURCE=""
DIR="jaxpet"
JAX_SPEC="jax[tpu]>=0.10.2"
EXTRAS=""

split_equals "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  common_flag "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --repo) need_value "$@"; REPO=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --source) need_value "$@"; SOURCE=$2; shift 2 ;;
    --dir) need_value "$@"; DIR=$2; shift 2 ;;
    --jax) need_value "$@"; JAX_SPEC=$2; shift 2 ;;
    --extras) need_value "$@"; EXTRAS=$2; shift 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

check_target
if [[ -z $REPO && -z $SOURCE ]]; then
  die "missing required argument: one of --repo URL or --source DIR"
fi
if [[ -n $REPO && -n $SOURCE ]]; then
  die "--repo and --source exclude each other"
fi
if [[ -n $SOURCE && ! -f $SOURCE/pyproject.toml ]]; then
  die "--source '$SOURCE' is not a jaxpet checkout (no pyproject.toml there)"
fi
[[ $DIR =~ ^[A-Za-z0-9_./~-]+$ ]] || die "--dir '$DIR' must be a plain path (letters, digits, ._-/~)"

PACKAGE="."
if [[ -n $EXTRAS ]]; then PACKAGE=".[$EXTRAS]"; fi

if [[ -n $REPO ]]; then
  # A re-run updates an existing clone instead of failing on it.
  FETCH="if [ -d $DIR/.git ]; then git -C $DIR fetch --depth 1 origin $REF && git -C $DIR checkout --force FETCH_HEAD; else git clone --depth 1 --branch $REF $REPO $DIR; fi"
  tpu_ssh all "$FETCH"
else
  ARCHIVE=$(mktemp -u "${TMPDIR:-/tmp}/jaxpet-src.XXXXXX").tar.gz
  run tar -czf "$ARCHIVE" -C "$SOURCE" --exclude=.git --exclude=.venv --exclude=runs \
    --exclude=__pycache__ .
  tpu_scp "$ARCHIVE" jaxpet-src.tar.gz
  run rm -f "$ARCHIVE"
  tpu_ssh all "mkdir -p $DIR && tar -xzf jaxpet-src.tar.gz -C $DIR && rm jaxpet-src.tar.gz"
fi

INSTALL="cd $DIR && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip"
INSTALL+=" && .venv/bin/pip install -q '$JAX_SPEC' -e '$PACKAGE'"
INSTALL+=" && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
tpu_ssh all "$INSTALL"
