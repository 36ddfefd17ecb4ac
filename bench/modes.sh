#!/usr/bin/env bash
# Guest downtime of each backup mode on the test guest (TCG), idle and while its writer runs
# (a tick every 50 ms: write + fsync + rename of two files), from vmdump's own task-log line
# `guest downtime: N ms (...)`:
#   snapshot: filesystems frozen (the fs-freeze command .. the fs-thaw reply, around the job
#             start; target < 100 ms)
#   suspend:  QMP stop .. cont (the jobs start in between)
#   stop:     shutdown request .. cont of the QEMU started again paused
# against the baseline the same guest would be down for without vmdump's modes: a plain
# `vm shutdown`, a backup of the stopped VM, `vm start` (wall time of the three commands).
#
# Usage: bench/modes.sh [rounds]   (default 3 per mode and load; BENCH_DIR picks the scratch
# directory). Prints one markdown table row per load for docs/benchmarks.md.
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
rounds=${1:-3}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/vmdump-bench-modes.XXXXXX")
vmdump=$(bench_vmdump)
tg="$root/.cache/testguest"
[ -s "$tg/initrd.gz" ] || bash "$root/testguest/build.sh" >&2
export VMDUMP_ROOT="$work/etc" VMDUMP_RUN_DIR="$work/run" VMDUMP_ACCEL=tcg
cleanup() {
  "$vmdump" vm stop 100 --skiplock >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/etc/qemu-server" "$work/store/images/100"
printf 'dir: local\n\tpath %s\n\tcontent images,backup\n' "$work/store" > "$work/etc/storage.cfg"
cp "$tg/data.raw" "$work/store/images/100/vm-100-disk-0.raw"

# boot APPEND: (re)start VM 100 with kernel arguments APPEND and wait for the guest.
boot() {
  "$vmdump" vm stop 100 --skiplock >/dev/null 2>&1 || true
  sed "s/quiet\"/quiet $1\"/" "$tg/vm.conf" > "$work/etc/qemu-server/100.conf"
  "$vmdump" vm start 100 >/dev/null
  ready
}

# ready: wait until the guest (also one started again by a stop-mode backup) has booted.
ready() {
  for _ in $(seq 600); do
    grep -q 'vmdump-testguest: ready' "$work/run/100/serial.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q 'vmdump-testguest: ready' "$work/run/100/serial.log"
  sleep 2 # the agent and the writer settle
}

# downtime MODE: one backup in MODE, prints the downtime in ms from its task log.
downtime() {
  local out
  ready
  out=$("$vmdump" backup 100 --mode "$1" --dumpdir "$work/dump" --stopwait 2)
  rm -f "$work"/dump/*.vma
  sed -n 's/^INFO: guest downtime: \([0-9]*\) ms.*/\1/p' <<<"$out"
}

# median of the arguments
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# baseline: shutdown, backup of the stopped VM, start; wall time in ms until `vm start`
# returns with the guest running again.
baseline() {
  local t0 t1
  ready
  t0=$(date +%s%N)
  "$vmdump" vm shutdown 100 --timeout 120 >/dev/null
  "$vmdump" backup 100 --dumpdir "$work/dump" >/dev/null
  "$vmdump" vm start 100 >/dev/null
  t1=$(date +%s%N)
  rm -f "$work"/dump/*.vma
  echo $(((t1 - t0) / 1000000))
}

for load in idle writing; do
  if [ "$load" = idle ]; then boot "vmdump.writer=0"; else boot "vmdump.interval=0.05"; fi
  declare -A med=()
  for mode in snapshot suspend stop; do
    vals=()
    for _ in $(seq "$rounds"); do vals+=("$(downtime "$mode")"); done
    med[$mode]=$(median "${vals[@]}")
    echo "bench: $load $mode downtime ms: ${vals[*]} (median ${med[$mode]})" >&2
  done
  vals=()
  for _ in $(seq "$rounds"); do vals+=("$(baseline)"); done
  base=$(median "${vals[@]}")
  echo "bench: $load shutdown/backup/start ms: ${vals[*]} (median $base)" >&2
  ratio=$(python3 -c "print(f'{${med[stop]} / $base:.2f}')")
  echo "| $(date -u '+%Y-%m-%d %H:%M') | $load | ${med[snapshot]} ms | ${med[suspend]} ms | ${med[stop]} ms | $base ms | ${ratio}x |"
done
