#!/usr/bin/env bash
# Delete a TPU VM or pod slice (and stop paying for it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $(basename "$0") --name NAME --zone ZONE [--yes] [options]

Delete the TPU. Everything on the workers' disks is lost: keep outputs on gs:// (or copy
them off first). Asks for confirmation unless --yes is given; without a terminal to ask
on, --yes is required.

Arguments:
$COMMON_USAGE
  --yes              delete without asking

Example:
  $(basename "$0") --name pet-v4 --zone us-central2-b --yes
USAGE
}

YES=0

split_equals "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  common_flag "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --yes) YES=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

check_target
if ((!YES && !DRY_RUN)); then
  [[ -t 0 ]] || die "refusing to delete '$NAME' without --yes (no terminal to confirm on)"
  read -r -p "Delete TPU '$NAME' in $ZONE? Its disks are lost. [y/N] " answer
  [[ $answer == [yY]* ]] || { echo "not deleted" >&2; exit 1; }
fi
location_flags
run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
