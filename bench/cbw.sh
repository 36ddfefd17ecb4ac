#!/usr/bin/env bash
# Copy-before-write: a live backup while the guest writes at full speed. The test guest (TCG)
# started by `vmdump vm start`, with a second disk (virtio1, raw, SIZE GiB of random data)
# that the guest overwrites with `dd bs=1M conv=fsync` from /dev/zero (the disk is refilled
# with the same random data from the host before every measurement). Every guest write to a
# cluster the backup has not copied yet first waits for QEMU to copy the old cluster to
# vmdump (copy-before-write; without fleecing). Measured in each round, interleaved:
#   guest-alone    the guest's dd with no backup running (its MB/s)
#   backup-alone   `vmdump backup` (uncompressed) with the guest idle
#   both           the dd and the backup started together: the guest's MB/s and the backup's
#                  time, against the two above
# Usage: bench/cbw.sh [size-GiB]   (default 1; ROUNDS (default 3); BENCH_DIR)
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init cbw 1 "$@"
rounds=${ROUNDS:-3}
vmdump=$(bench_vmdump)
tg="$root/.cache/testguest"
[ -s "$tg/initrd.gz" ] || bash "$root/testguest/build.sh" >&2
cleanup() {
  "$vmdump" vm stop 100 --skiplock >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
bench_vm_env

d="$work/store/images/100"
mkdir -p "$d" "$work/out"
cp "$tg/data.raw" "$d/vm-100-disk-0.raw"
echo "bench: writing ${size_gib} GiB of random data into the guest's second disk"
head -c "$size" /dev/urandom > "$work/random.raw"
cp "$work/random.raw" "$d/vm-100-disk-1.raw"
# The writer of the test guest stays off: the dd is the load.
sed 's/quiet"/quiet vmdump.writer=0"/' "$tg/vm.conf" > "$work/etc/qemu-server/100.conf"
printf 'virtio1: local:100/vm-100-disk-1.raw,size=%sG\n' "$size_gib" >> "$work/etc/qemu-server/100.conf"
"$vmdump" vm start 100 >/dev/null
bench_vm_check_direct 100
for _ in $(seq 600); do
  grep -q 'vmdump-testguest: ready' "$work/run/100/serial.log" 2>/dev/null && break
  sleep 0.1
done
grep -q 'vmdump-testguest: ready' "$work/run/100/serial.log"
qga="$work/run/100/qga.sock"
mib=$((size >> 20))
# The guest times its own dd with /proc/uptime (busybox dd prints no rate).
dd_cmd="a=\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/dev/vdb bs=1M count=$mib conv=fsync 2>/dev/null; b=\$(cut -d' ' -f1 /proc/uptime); echo \$a \$b"

# MiB/s of the dd from the guest's "start end" uptime line.
rate_of() { awk -v m="$mib" 'NF == 2 { printf "%.1f\n", m / ($2 - $1) }'; }

# refill: the second disk holds random data again (the guest's dd leaves zeros), written
# O_DIRECT as QEMU reads it, while the guest is idle.
refill() {
  dd if="$work/random.raw" of="$d/vm-100-disk-1.raw" bs=4M oflag=direct conv=notrunc status=none
}

backup() { # appends the bench_timed line to $work/$1
  rm -rf "$work/out" && mkdir -p "$work/out"
  bench_timed "$work/$1" "$vmdump" backup 100 --compress 0 --dumpdir "$work/out"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= rounds; r++)); do
  refill
  python3 "$root/bench/qmp.py" exec "$qga" "$dd_cmd" | rate_of >> "$work/guest-alone"
  refill
  backup backup-alone
  pid=$(python3 "$root/bench/qmp.py" exec-start "$qga" "$dd_cmd")
  backup both
  python3 "$root/bench/qmp.py" exec-wait "$qga" "$pid" | rate_of >> "$work/guest-both"
  echo "bench: round $r guest alone $(tail -1 "$work/guest-alone") MiB/s, with backup $(tail -1 "$work/guest-both") MiB/s;" \
    "backup alone $(tail -1 "$work/backup-alone" | cut -d' ' -f1) s, with the guest writing $(tail -1 "$work/both" | cut -d' ' -f1) s" >&2
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

med() { sort -g "$1" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
spread() { sort -g "$1" | awk '{ a[NR] = $1 } END { printf "%s-%s", a[1], a[NR] }'; }
echo
echo "Copy-before-write, $(date -u '+%Y-%m-%d %H:%M') UTC: test guest (TCG) overwriting its ${size_gib} GiB second disk with"
echo "dd while \`vmdump backup --compress 0\` runs; $(nproc) CPUs, $rounds rounds, load average $load_start at the start, $load_end at the end."
echo
echo "| measure | alone (median, range) | during the other (median, range) | ratio of medians |"
echo "| --- | ---: | ---: | ---: |"
awk '{ print $1 }' "$work/backup-alone" > "$work/ba"
awk '{ print $1 }' "$work/both" > "$work/bb"
echo "| guest dd MiB/s | $(med "$work/guest-alone") ($(spread "$work/guest-alone")) | $(med "$work/guest-both") ($(spread "$work/guest-both")) | $(awk -v a="$(med "$work/guest-both")" -v b="$(med "$work/guest-alone")" 'BEGIN { printf "%.2f", a / b }') |"
echo "| backup s | $(med "$work/ba") ($(spread "$work/ba")) | $(med "$work/bb") ($(spread "$work/bb")) | $(awk -v a="$(med "$work/bb")" -v b="$(med "$work/ba")" 'BEGIN { printf "%.2f", a / b }') |"
