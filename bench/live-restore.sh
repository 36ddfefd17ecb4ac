#!/usr/bin/env bash
# Live-restore benchmark (issue 15): time from the command to the test guest's "ready" line
# with `vmdump restore --live --background` against a full `vmdump restore` followed by
# `vmdump vm start`, from the same archive, rounds interleaved. Also the time until the live
# copy is complete.
#
# Usage: bench/live-restore.sh [size-GiB]   (default 4; ROUNDS, default 2; BENCH_DIR picks
# the scratch directory)
# The disk: the test guest's 64 MiB ext4 data disk grown to size-GiB, half of it data
# (alternating random and repeated text, as bench_half_data) after the filesystem; backed up
# with `vmdump backup --compress zstd` (a seekable .vma.zst).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init live-restore 4 "$@"
vmdump=$(bench_vmdump)
guest="$root/.cache/testguest"
[ -f "$guest/vm.conf" ] || bash "$root/testguest/build.sh"
bench_vm_env
cleanup() {
  for v in 100 200 201; do
    "$vmdump" vm stop "$v" --skiplock >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/store/images/100"
sed "s/@VMID@/100/g" "$guest/vm.conf" > "$work/etc/qemu-server/100.conf"
img="$work/store/images/100/vm-100-disk-0.raw"
cp "$guest/data.raw" "$img"
bench_half_data "$img" "$size" 64
"$vmdump" backup 100 --storage local --compress zstd >"$work/backup.log" 2>&1 ||
  { cat "$work/backup.log" >&2; exit 1; }
archive=$(ls "$work"/store/dump/vzdump-qemu-100-*.vma.zst)
echo "bench: archive $(($(stat -c %s "$archive") >> 20)) MiB"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
best() { python3 -c "print(min(float(x) for x in '$*'.split()))"; }
ready() { # vmid: wait for the guest's ready line
  until grep -q 'vmdump-testguest: ready' "$work/run/$1/serial.log" 2>/dev/null; do sleep 0.05; done
}
drop() { # vmid: stop the VM and remove it
  "$vmdump" vm stop "$1" --skiplock >/dev/null 2>&1 || true
  rm -rf "$work/etc/qemu-server/$1.conf" "$work/store/images/$1"
}

full() { # prints "ready-seconds restore-seconds boot-seconds"
  local t0 t1 t2
  sync; t0=$(now)
  "$vmdump" restore "$archive" 200 --storage local >"$work/full.log" 2>&1 ||
    { cat "$work/full.log" >&2; exit 1; }
  t1=$(now)
  "$vmdump" vm start 200 >/dev/null
  ready 200
  t2=$(now)
  echo "$(secs "$t0" "$t2") $(secs "$t0" "$t1") $(secs "$t1" "$t2")"
  drop 200
}
live() { # prints "ready-seconds running-seconds copy-complete-seconds"
  local t0 t1 t2
  sync; t0=$(now)
  "$vmdump" restore --live "$archive" 201 --storage local --background >"$work/live.log" 2>&1 ||
    { cat "$work/live.log" >&2; exit 1; }
  t1=$(now)
  ready 201
  t2=$(now)
  until grep -q 'live-restore of VM 201 complete' "$work/run/live-restore/201.log"; do
    if grep -q 'failed' "$work/run/live-restore/201.log"; then
      cat "$work/run/live-restore/201.log" >&2; exit 1
    fi
    sleep 0.2
  done
  echo "$(secs "$t0" "$t2") $(secs "$t0" "$t1") $(secs "$t0" "$(now)")"
  drop 201
}

declare -A T
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
  echo "bench: round $round"
  read -r a b c < <(full)
  T[full]+=" $a"; T[full_restore]+=" $b"; T[full_boot]+=" $c"
  read -r a b c < <(live)
  T[live]+=" $a"; T[live_running]+=" $b"; T[copy]+=" $c"
done
for k in "${!T[@]}"; do T[$k]=$(best "${T[$k]}"); done
ratio() { python3 -c "print(f'{$1 / $2:.1f}')"; }
echo "vmdump live-restore benchmark: ${size_gib} GiB disk, half data, $(nproc) CPUs, TCG guest, best of ${ROUNDS:-2} interleaved rounds, load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command -> guest ready: full restore + vm start ${T[full]} s (restore ${T[full_restore]} s, boot ${T[full_boot]} s); live-restore ${T[live]} s; live is $(ratio "${T[full]}" "${T[live]}")x faster (target >= 5x)"
echo "command -> VM running: full restore + vm start ${T[full_restore]} s + start; live-restore ${T[live_running]} s ($(ratio "${T[full_restore]}" "${T[live_running]}")x)"
echo "live-restore copy complete after ${T[copy]} s (the guest running all along)"
