#!/usr/bin/env bash
# Live-backup benchmark: `vmdump backup` of a disk with ~50% data on a paused VM (QEMU -S with
# the runtime's socket layout, so the live path runs: NBD target, copy-before-write jobs,
# VMA writer), uncompressed and zstd, against `qemu-img convert` of the same image and
# `zstd -T0 -1` of its raw bytes, all in the same run on the same (page-cached) data.
#
# Usage: bench/backup.sh [size-GiB]   (default 8; BENCH_DIR picks the scratch directory)
# Times include making the output durable (sync / fsync). Prints rates, ratios against the targets (uncompressed >= 0.8x qemu-img convert,
# zstd >= 0.9x the zstd CLI) and vmdump's peak RSS (target < 256 MiB).
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init backup 8 "$@"
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

vmdump=$(bench_vmdump)

# The disk: first half data (alternating 64 MiB of random bytes and of text, so zstd has
# something to do), second half never written (sparse).
img="$work/store/images/100/vm-100-disk-0.raw"
mkdir -p "$(dirname "$img")" "$work/etc/qemu-server" "$work/run/100"
bench_half_data "$img" "$size"
printf 'dir: local\n\tpath %s\n\tcontent images,backup\n' "$work/store" > "$work/etc/storage.cfg"
printf 'memory: 256\nname: bench\nscsi0: local:100/vm-100-disk-0.raw,size=%sG\n' "$size_gib" \
  > "$work/etc/qemu-server/100.conf"
cat "$img" > /dev/null # page cache warm for every contender

rate() { python3 -c "print(f'{$1 / $2 / 1048576:.1f}')"; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

# Every contender's time includes getting its output onto the disk (`sync` after the
# baselines; vmdump fsyncs the archive before renaming it), and each starts with no dirty
# pages of an earlier one. ROUNDS interleaved rounds (default 3); the best time counts.
min() { python3 -c "print(min($1, $2))"; }
convert_once() {
  sync
  local t0; t0=$(now)
  qemu-img convert -U -f raw -O raw "$img" "$work/convert.raw" >&2
  sync
  secs "$t0" "$(now)"
  rm -f "$work/convert.raw"
}
zstd_once() {
  sync
  local t0; t0=$(now)
  zstd -q -T0 -1 -f "$img" -o "$work/cli.zst"
  sync
  secs "$t0" "$(now)"
  stat -c %s "$work/cli.zst" > "$work/zstd-size"
  rm -f "$work/cli.zst"
}

# A paused VM with the runtime's layout (qmp.sock in <run>/<vmid>/).
qemu-system-x86_64 -nodefaults -display none -m 256 -S -machine q35,accel=kvm:tcg \
  -qmp "unix:$work/run/100/qmp.sock,server=on,wait=off" \
  -blockdev "driver=raw,node-name=drive-scsi0,file.driver=file,file.filename=$img" \
  -device virtio-blk-pci,drive=drive-scsi0,id=scsi0 >"$work/qemu.log" 2>&1 &
qemu_pid=$!
for _ in $(seq 100); do [ -S "$work/run/100/qmp.sock" ] && break; sleep 0.1; done

backup() { # compress -> "seconds rss_kib archive_bytes"
  rm -rf "$work/store/dump"
  sync
  local t0 t1 rss
  t0=$(now)
  VMDUMP_RUN_DIR="$work/run" /usr/bin/time -f '%M' -o "$work/time.txt" \
    "$vmdump" backup 100 --root "$work/etc" --compress "$1" >"$work/backup-$1.log" 2>&1 ||
    { cat "$work/backup-$1.log" >&2; exit 1; }
  t1=$(now)
  rss=$(tail -1 "$work/time.txt")
  echo "$(secs "$t0" "$t1") $rss $(stat -c %s "$work"/store/dump/*.vma*)"
}
t_convert=1e9; t_zstd=1e9; t_plain=1e9; t_zst=1e9; rss_plain=0; rss_zst=0
load=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ${ROUNDS:-3}; r++)); do
  t_convert=$(min "$t_convert" "$(convert_once)")
  t_zstd=$(min "$t_zstd" "$(zstd_once)")
  read -r t rss size_plain < <(backup 0)
  t_plain=$(min "$t_plain" "$t"); rss_plain=$((rss > rss_plain ? rss : rss_plain))
  read -r t rss size_zst < <(backup zstd)
  t_zst=$(min "$t_zst" "$t"); rss_zst=$((rss > rss_zst ? rss : rss_zst))
done
zstd_size=$(cat "$work/zstd-size")
kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=

r_convert=$(rate "$size" "$t_convert")
r_zstd=$(rate "$size" "$t_zstd")
r_plain=$(rate "$size" "$t_plain")
r_zst=$(rate "$size" "$t_zst")
cat <<EOF
vmdump live backup benchmark: ${size_gib} GiB raw disk, 50% data, paused VM, $(nproc) CPUs,
best of ${ROUNDS:-3} rounds, load average at start: $load
contender                        time s   MiB/s   output MiB   peak RSS MiB
qemu-img convert (raw->raw)    $(printf '%8s %7s' "$t_convert" "$r_convert")            -              -
zstd -T0 -1                    $(printf '%8s %7s %12s' "$t_zstd" "$r_zstd" $((zstd_size >> 20)))              -
vmdump backup --compress 0     $(printf '%8s %7s %12s %14s' "$t_plain" "$r_plain" $((size_plain >> 20)) $((rss_plain >> 10)))
vmdump backup --compress zstd  $(printf '%8s %7s %12s %14s' "$t_zst" "$r_zst" $((size_zst >> 20)) $((rss_zst >> 10)))
ratio uncompressed / qemu-img convert: $(python3 -c "print(f'{$r_plain / $r_convert:.2f}')") (target >= 0.8)
ratio zstd / zstd CLI:                 $(python3 -c "print(f'{$r_zst / $r_zstd:.2f}')") (target >= 0.9)
EOF
