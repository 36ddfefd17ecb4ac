#!/usr/bin/env bash
# Cost of holes in a live backup: a 64 GiB qcow2 holding 100 MiB of data against a 4 GiB
# qcow2 holding the same 100 MiB (same clusters at the same offsets), each attached to a VM
# started by `vmdump vm start --paused` (cache.direct, as real VMs). Target: the 64 GiB disk
# backs up within 1.5x the time of the 4 GiB one. QEMU's own push of each disk into a new
# local qcow2 is the reference (the backup job itself walks the holes too; a null-co target is
# no reference here: it has no write-zeroes, so QEMU writes every hole as buffers of zeros,
# 40-50 s for 64 GiB).
#
# Contenders, interleaved, ROUNDS rounds (default 3):
#   vmdump backup --compress 0 and --compress zstd of VM 101 (4 GiB) and VM 102 (64 GiB)
#   QEMU's blockdev-backup sync=full of each disk into a new qcow2 (flushed by blockdev-del)
#
# Usage: bench/sparse.sh [big-GiB]   (default 64; the small disk is 4 GiB, the data 100 MiB)
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init sparse 64 "$@"
big_gib=$size_gib
rounds=${ROUNDS:-3}
vmdump=$(bench_vmdump)
cleanup() {
  for v in 101 102; do "$vmdump" vm stop "$v" --skiplock >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
bench_vm_env

# 100 MiB of random data in 100 pieces of 1 MiB, one every 40 MiB (inside the first 4 GiB).
raw="$work/data.raw"
truncate -s 4G "$raw"
for ((i = 0; i < 100; i++)); do
  head -c $((1 << 20)) /dev/urandom | dd of="$raw" bs=1M seek=$((i * 40)) conv=notrunc status=none
done
for v in 101 102; do
  mkdir -p "$work/store/images/$v"
  qemu-img convert -q -f raw -O qcow2 "$raw" "$work/store/images/$v/vm-$v-disk-0.qcow2"
done
qemu-img resize -q "$work/store/images/102/vm-102-disk-0.qcow2" "${big_gib}G"
rm -f "$raw"
for v in 101 102; do
  gib=4
  [ "$v" = 102 ] && gib=$big_gib
  printf 'memory: 256\nname: sparse%s\nscsi0: local:%s/vm-%s-disk-0.qcow2,size=%sG\n' "$v" "$v" "$v" "$gib" \
    > "$work/etc/qemu-server/$v.conf"
  "$vmdump" vm start "$v" --paused >/dev/null
  bench_vm_check_direct "$v"
done
mkdir -p "$work/out"

run() { # NAME VMID
  local name=$1 v=$2 out="$work/out"
  rm -rf "$out" && mkdir -p "$out"
  case $name in
    *-plain-*) bench_timed "$work/$name" "$vmdump" backup "$v" --compress 0 --dumpdir "$out" ;;
    *-zstd-*) bench_timed "$work/$name" "$vmdump" backup "$v" --compress zstd --dumpdir "$out" ;;
    qemu-qcow2-*)
      local bytes
      bytes=$(qemu-img info -U --output=json "$work/store/images/$v/vm-$v-disk-0.qcow2" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
      qemu-img create -q -f qcow2 "$out/push.qcow2" "$bytes"
      bench_timed "$work/$name" python3 "$root/bench/qmp.py" push "$work/run/$v/qmp.sock" \
        drive-scsi0 "qcow2:$out/push.qcow2" ;;
  esac
  sed -i "\$s/\$/ $(du -cb "$out" | tail -1 | cut -f1)/" "$work/$name"
  echo "bench: round $r $name $(tail -1 "$work/$name")" >&2
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= rounds; r++)); do
  for kind in plain zstd; do
    run "vmdump-$kind-4" 101
    run "vmdump-$kind-$big_gib" 102
  done
  run qemu-qcow2-4 101
  run "qemu-qcow2-$big_gib" 102
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Sparse disks, $(date -u '+%Y-%m-%d %H:%M') UTC: qcow2 with 100 MiB of data, 4 GiB vs ${big_gib} GiB, VMs by"
echo "\`vmdump vm start --paused\`, $(nproc) CPUs, $rounds interleaved rounds, load average $load_start at the start, $load_end at the end."
echo
echo "| contender | disk | best s | median s | worst s | CPU user+sys s (median) | peak RSS MiB | output bytes |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for c in vmdump-plain vmdump-zstd qemu-qcow2; do
  for g in 4 "$big_gib"; do
    f="$work/$c-$g"
    read -r best med worst < <(bench_stats "$f" 1)
    cpu=$(awk '{ print $2 + $3 }' "$f" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    rss=$(bench_stats "$f" 4 | cut -d' ' -f3)
    echo "| $c | $g GiB | $best | $med | $worst | $cpu | $((rss >> 10)) | $(tail -1 "$f" | awk '{ print $8 }') |"
  done
done
echo
for c in vmdump-plain vmdump-zstd qemu-qcow2; do
  paste -d' ' <(awk '{ print $1 }' "$work/$c-$big_gib") <(awk '{ print $1 }' "$work/$c-4") |
    awk -v c="$c" -v g="$big_gib" -v b="$(bench_stats "$work/$c-$big_gib" 1 | cut -d' ' -f1)" \
      -v s="$(bench_stats "$work/$c-4" 1 | cut -d' ' -f1)" '
      { r = $1 / $2; if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r }
      END { printf "- %s: %s GiB / 4 GiB time **%.2f** (per round %.2f-%.2f; target <= 1.5 for vmdump)\n", c, g, b / s, lo, hi }'
done
clusters=$(((big_gib - 4) << 14))
echo "- the VMA floor: ${big_gib} GiB - 4 GiB = $clusters more clusters, each a blockinfo slot in an"
echo "  extent header (58 per 512-byte header, as Proxmox writes them): $((clusters / 58 * 512)) bytes more archive, written whatever the tool"
