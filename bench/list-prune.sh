#!/usr/bin/env bash
# Listing and prune-planning benchmark: `vmdump list` and `vmdump prune --dry-run` on a backup
# storage holding 10 000 backups (empty archive files with their .log; every 10th has notes,
# every 50th is protected), 100 guests x 100 daily backups. Target: under 200 ms each.
#
# Usage: bench/list-prune.sh [backups]   (default 10000; BENCH_DIR picks the scratch directory)
# Prints the best of 5 wall-clock runs of each command (output to /dev/null).
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
count=${1:-10000}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/vmdump-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

source "$root/bench/lib.sh"
vmdump=$(bench_vmdump)

mkdir -p "$work/etc"
bench_fake_backups "$work/store" "$count" >"$work/etc/storage.cfg"
echo "bench: $count backups, $(ls "$work/store/dump" | wc -l) files in the dump directory"

best() {
  local best_ms=999999 ms start
  for _ in 1 2 3 4 5; do
    start=$(date +%s%N)
    "$@" >/dev/null
    ms=$((($(date +%s%N) - start) / 1000000))
    ((ms < best_ms)) && best_ms=$ms
  done
  echo "$best_ms"
}

export VMDUMP_ROOT="$work/etc"
list_ms=$(best "$vmdump" list bench)
json_ms=$(best "$vmdump" list bench --output-format json)
prune_ms=$(best "$vmdump" prune bench --keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 6 --dry-run)
echo "vmdump list (table):             ${list_ms} ms (target < 200 ms)"
echo "vmdump list --output-format json: ${json_ms} ms"
echo "vmdump prune --dry-run:          ${prune_ms} ms (target < 200 ms)"
