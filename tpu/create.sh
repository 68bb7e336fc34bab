#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice for jaxpet.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") --name NAME --zone ZONE --accelerator-type TYPE [options]

Create a TPU VM (one host) or a pod slice (several hosts) with gcloud.

Arguments:
$COMMON_USAGE
  --accelerator-type TYPE
                     slice type, e.g. v4-8, v4-32, v5litepod-8 (v5e-8 is accepted), v5p-8,
                     v6e-8 (required)
  --version VERSION  TPU software (runtime) version; default by generation:
                     v2/v3/v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite,
                     v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot             create a Spot TPU (cheaper, can be reclaimed at any time)
  --preemptible      create a preemptible TPU (older form of --spot); not with --spot

Example:
  $(basename "$0") --name pet-v4 --zone us-central2-b --accelerator-type v4-32 --spot
EOF
}

ACCELERATOR=""
VERSION=""
SPOT=0
PREEMPTIBLE=0

split_equals "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  common_flag "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --accelerator-type) need_value "$@"; ACCELERATOR=$2; shift 2 ;;
    --version) need_value "$@"; VERSION=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

check_target
require "$ACCELERATOR" --accelerator-type
if ((SPOT && PREEMPTIBLE)); then
  die "--spot and --preemptible exclude each other"
fi
# gcloud names v5e slices v5litepod-N.
ACCELERATOR=${ACCELERATOR/#v5e-/v5litepod-}
[[ $ACCELERATOR =~ ^v([2-6])(e|p|litepod)?-[0-9]+$ ]] ||
  die "--accelerator-type '$ACCELERATOR' is not a TPU type like v4-8, v5litepod-8, v5p-8, v6e-8"

if [[ -z $VERSION ]]; then
  case $ACCELERATOR in
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi

location_flags
CMD=(gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}"
  "--accelerator-type=$ACCELERATOR" "--version=$VERSION")
if ((SPOT)); then CMD+=(--spot); fi
if ((PREEMPTIBLE)); then CMD+=(--preemptible); fi
run "${CMD[@]}"
