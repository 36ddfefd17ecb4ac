#!/usr/bin/env bash
# Live-backup benchmark, like for like: every contender backs up the same disk of the same
# running QEMU, started by `vmdump vm start` (so the disk is opened with cache.direct, i.e.
# O_DIRECT, as for real VMs), paused (-S) so every round sees the same bytes; each contender
# makes its own output durable and nothing else (QEMU: blockdev-del flushes its target;
# vmdump: fsync before the rename; the tools: `sync FILE`, an fsync of that one file).
#
# Contenders, interleaved in every round (the order rotates from round to round):
#   vmdump-0        vmdump backup --compress 0
#   vmdump-0-tmpfs  the same into a dump dir on /dev/shm: vmdump without the archive's disk
#                   writes, against qemu-null (which writes nothing): the software's ceiling
#   vmdump-zstd1    vmdump backup --compress zstd --zstd 1       (level 1)
#   vmdump-zstdN    vmdump backup --compress zstd --zstd N       (N = nproc)
#   qemu-qcow2      QEMU's own blockdev-backup sync=full push into a local qcow2 (as libvirt's
#                   push mode / qmpbackup do); blockdev-del flushes it
#   qemu-null       the same push into a null-co node: the backup job's own ceiling
#   convert         qemu-img convert -U -T none -f raw -O raw (reads like the VM) + sync FILE
#   zstd1 / zstdN   zstd -T1 -1 / zstd -TN -1 of the raw image + sync FILE (source page cache
#                   dropped first, so it reads from the disk too)
#
# Usage: bench/backup.sh [size-GiB]   (default 4, half of it data; ROUNDS (default 3) rounds,
# BENCH_DIR (default /var/tmp) for the scratch directory, VMDUMP to measure another binary,
# ONLY="vmdump-0 qemu-qcow2 ..." to run a subset). Prints a markdown table (best, median and
# worst wall time, CPU, faults, context switches, peak RSS) and the ratios (peer time /
# vmdump time, > 1 = vmdump faster) of the best times, with the spread of the per-round
# ratios.
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init backup 4 "$@"
rounds=${ROUNDS:-3}
n=$(nproc)
vmdump=$(bench_vmdump)
cleanup() {
  "$vmdump" vm stop 100 --skiplock >/dev/null 2>&1 || true
  rm -rf "$work"
  rm -rf /dev/shm/vmdump-bench.*
}
trap cleanup EXIT
bench_vm_env

img="$work/store/images/100/vm-100-disk-0.raw"
mkdir -p "$(dirname "$img")" "$work/out"
bench_half_data "$img" "$size"
printf 'memory: 256\nname: bench\nscsi0: local:100/vm-100-disk-0.raw,size=%sG\n' "$size_gib" \
  > "$work/etc/qemu-server/100.conf"
"$vmdump" vm start 100 --paused >/dev/null
bench_vm_check_direct 100
qmp="$work/run/100/qmp.sock"

all="vmdump-0 vmdump-0-tmpfs vmdump-zstd1 vmdump-zstd$n qemu-qcow2 qemu-null convert zstd1 zstd$n"
contenders=${ONLY:-$all}

# run NAME: one backup by contender NAME; appends its bench_timed line (plus QEMU's CPU
# seconds and the output bytes) to $work/NAME.
run() {
  local name=$1 out="$work/out" q0 q1 bytes
  rm -rf "$out" && mkdir -p "$out"
  bench_drop_cache "$img"
  q0=$(bench_qemu_cpu 100)
  case $name in
    vmdump-0) bench_timed "$work/$name" "$vmdump" backup 100 --compress 0 --dumpdir "$out" ;;
    vmdump-0-tmpfs)
      out=$(mktemp -d /dev/shm/vmdump-bench.XXXXXX)
      bench_timed "$work/$name" "$vmdump" backup 100 --compress 0 --dumpdir "$out" ;;
    vmdump-zstd*)
      bench_timed "$work/$name" "$vmdump" backup 100 --compress zstd --zstd "${name#vmdump-zstd}" \
        --dumpdir "$out" ;;
    qemu-qcow2)
      qemu-img create -q -f qcow2 "$out/push.qcow2" "$size"
      bench_timed "$work/$name" python3 "$root/bench/qmp.py" push "$qmp" drive-scsi0 \
        "qcow2:$out/push.qcow2" ;;
    qemu-null)
      bench_timed "$work/$name" python3 "$root/bench/qmp.py" push "$qmp" drive-scsi0 "null:$size" ;;
    convert)
      bench_timed "$work/$name" sh -c 'qemu-img convert -U -T none -f raw -O raw "$1" "$2" && sync "$2"' \
        sh "$img" "$out/convert.raw" ;;
    zstd*)
      bench_timed "$work/$name" sh -c 'zstd -q -T"$3" -1 "$1" -o "$2" && sync "$2"' \
        sh "$img" "$out/disk.raw.zst" "${name#zstd}" ;;
  esac
  q1=$(bench_qemu_cpu 100)
  bytes=$(du -cb "$out" | tail -1 | cut -f1)
  [[ $out == /dev/shm/* ]] && rm -rf "$out"
  # Append QEMU's CPU and the output size to the line just written.
  sed -i "\$s/\$/ $(awk -v a="$q0" -v b="$q1" 'BEGIN { printf "%.2f", b - a }') $bytes/" "$work/$name"
  echo "bench: round $r $name $(tail -1 "$work/$name")" >&2
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck disable=SC2086 # one contender a word
bench_rounds "$rounds" run $contenders
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Live backup, $(date -u '+%Y-%m-%d %H:%M') UTC: ${size_gib} GiB raw disk ($((size_gib * 512)) MiB data), VM by \`vmdump vm start --paused\`,"
echo "$n CPUs, $rounds interleaved rounds, load average $load_start at the start, $load_end at the end."
echo
# shellcheck disable=SC2086 # one contender a word
bench_backup_table "output MiB" $contenders
echo
bench_ratio qemu-qcow2 vmdump-0 "target >= 0.95"
bench_ratio qemu-null vmdump-0 "target >= 0.90"
bench_ratio qemu-null vmdump-0-tmpfs "target >= 0.90 (without the archive's disk writes)"
bench_ratio convert vmdump-0 "target -"
bench_ratio zstd1 vmdump-zstd1 "target >= 1.0"
bench_ratio "zstd$n" "vmdump-zstd$n" "target >= 1.0"
