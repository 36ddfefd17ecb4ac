#!/usr/bin/env bash
# Restore benchmark: `vmdump restore` of a VMA archive of a disk with ~50% data, to raw and to
# qcow2, from an uncompressed and a zstd archive, against `qemu-img convert` of the same disk
# (raw->raw and raw->qcow2) and `zstd -d` of the same archive, all in the same run on the same
# (page-cached) data.
#
# Usage: bench/restore.sh [size-GiB]   (default 8; BENCH_DIR picks the scratch directory)
# Prints times, rates over the disk size, the ratio against the target (restore to raw
# >= 0.9x qemu-img convert to raw) and vmdump's peak RSS.
#
# A restore is durable (it fsyncs every disk before it writes the config); `qemu-img convert`
# is not (cache mode unsafe). So convert is also timed followed by `sync`, and both are also
# run to a tmpfs target (/dev/shm, when it has room), where durability costs nothing and
# the two data paths compete on equal terms.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init restore 8 "$@"
shm=
# tmpfs contenders need room for one restored disk (half the size is data) plus slack.
if [[ -d /dev/shm ]] && (($(df --output=avail -B1 /dev/shm | tail -1) > size / 2 + (1 << 30))); then
  shm=$(mktemp -d /dev/shm/vmdump-bench-restore.XXXXXX)
fi
trap 'rm -rf "$work" ${shm:+"$shm"}' EXIT

vmdump=$(bench_vmdump)

# The source disk: first half data (alternating 64 MiB of random bytes and of text, so zstd has
# something to do), second half never written (sparse).
img="$work/src.raw"
bench_half_data "$img" "$size"

# The "backup": the archived config has an empty format in its map line, so the target
# storage's default format decides (raw on `local`, qcow2 on `q`).
mkdir -p "$work/etc/qemu-server" "$work/run"
printf 'memory: 256\nname: bench\nscsi0: local:100/vm-100-disk-0.raw,size=%sG\n#qmdump#map:scsi0:drive-scsi0:local::\n' \
  "$size_gib" > "$work/qemu-server.conf"
printf 'dir: local\n\tpath %s\n\tcontent images\n\ndir: q\n\tpath %s\n\tcontent images\n\tformat qcow2\n' \
  "$work/store" "$work/storeq" > "$work/etc/storage.cfg"
[[ -z $shm ]] || printf '\ndir: shm\n\tpath %s\n\tcontent images\n' "$shm/store" >> "$work/etc/storage.cfg"
echo "bench: creating the archives"
"$vmdump" vma create "$work/a.vma" -c "$work/qemu-server.conf" -d "format=raw:drive-scsi0=$img"
zstd -q -T0 "$work/a.vma" -o "$work/a.vma.zst"
cat "$img" "$work/a.vma" "$work/a.vma.zst" > /dev/null # page cache warm for every contender

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
rate() { python3 -c "print(f'{$1 / $2 / 1048576:.0f}')"; }

timed() { # command... -> seconds; every contender starts with no dirty pages
  local t0
  sync
  t0=$(now)
  "$@"
  secs "$t0" "$(now)"
}
best() { python3 -c "print(min(float(x) for x in '$*'.split()))"; }

# qemu-img convert does not fsync its output (its data may still be in the page cache when it
# exits); vmdump restore fsyncs every disk before it writes the config. So convert is timed
# both ways: as is, and followed by `sync` of its output (like for like).
convert_sync() { qemu-img convert -f raw -O raw "$img" "$work/convert.raw" && sync "$work/convert.raw"; }
convert_q_sync() { qemu-img convert -f raw -O qcow2 "$img" "$work/convert.qcow2" && sync "$work/convert.qcow2"; }
unzstd() { zstd -q -d -c "$work/a.vma.zst" > /dev/null; }

restore() { # archive storage -> "seconds rss_kib"
  local t0 t1 out
  rm -rf "$work/store" "$work/storeq" ${shm:+"$shm/store"} "$work/etc/qemu-server/200.conf"
  sync
  t0=$(now)
  VMDUMP_RUN_DIR="$work/run" /usr/bin/time -f '%M' -o "$work/time.txt" \
    "$vmdump" restore "$1" 200 --root "$work/etc" --storage "$2" >"$work/restore.log" 2>&1 ||
    { cat "$work/restore.log" >&2; exit 1; }
  t1=$(now)
  # Same bytes as the source, every time.
  out=$(ls "$work"/store*/images/200/* ${shm:+"$shm"}/store/images/200/* 2>/dev/null || true)
  qemu-img compare -q -f raw "$img" "$out" || { echo "bench: restored disk differs" >&2; exit 1; }
  echo "$(secs "$t0" "$t1") $(tail -1 "$work/time.txt")"
}

# The machine is shared and its disk speed drifts: contenders run interleaved, ROUNDS times
# (default 2), and the best time of each counts.
declare -A T
declare -A RSS
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
  echo "bench: round $round"
  T[convert]+=" $(timed qemu-img convert -f raw -O raw "$img" "$work/convert.raw")"
  rm -f "$work/convert.raw"
  T[convert_sync]+=" $(timed convert_sync)"
  rm -f "$work/convert.raw"
  T[convert_q]+=" $(timed qemu-img convert -f raw -O qcow2 "$img" "$work/convert.qcow2")"
  rm -f "$work/convert.qcow2"
  T[convert_q_sync]+=" $(timed convert_q_sync)"
  rm -f "$work/convert.qcow2"
  if [[ -n $shm ]]; then
    T[convert_shm]+=" $(timed qemu-img convert -f raw -O raw "$img" "$shm/convert.raw")"
    rm -f "$shm/convert.raw"
    read -r t _ < <(restore "$work/a.vma" shm)
    T[shm]+=" $t"
  fi
  T[unzstd]+=" $(timed unzstd)"
  for c in "raw a.vma local" "zraw a.vma.zst local" "q a.vma q" "zq a.vma.zst q"; do
    read -r name file sid <<<"$c"
    read -r t rss < <(restore "$work/$file" "$sid")
    T[$name]+=" $t"
    RSS[$name]=$rss
  done
done
for k in "${!T[@]}"; do T[$k]=$(best "${T[$k]}"); done
t_convert=${T[convert]} t_convert_sync=${T[convert_sync]} t_convert_q=${T[convert_q]}
t_convert_q_sync=${T[convert_q_sync]}
t_unzstd=${T[unzstd]} t_raw=${T[raw]} t_zraw=${T[zraw]} t_q=${T[q]} t_zq=${T[zq]}
rss_raw=${RSS[raw]} rss_zraw=${RSS[zraw]} rss_q=${RSS[q]} rss_zq=${RSS[zq]}

vma_mib=$(($(stat -c %s "$work/a.vma") >> 20))
zst_mib=$(($(stat -c %s "$work/a.vma.zst") >> 20))
r_convert=$(rate "$size" "$t_convert")
r_convert_sync=$(rate "$size" "$t_convert_sync")
r_raw=$(rate "$size" "$t_raw")
row() { printf '%-40s %8s %8s %10s\n' "$1" "$2" "$(rate "$size" "$2")" "$3"; }
echo "vmdump restore benchmark: ${size_gib} GiB disk, 50% data, archive ${vma_mib} MiB (zstd ${zst_mib} MiB), $(nproc) CPUs"
printf '%-40s %8s %8s %10s\n' contender "time s" "MiB/s" "RSS MiB"
row "qemu-img convert raw -> raw" "$t_convert" -
row "qemu-img convert raw -> raw + sync" "$t_convert_sync" -
row "qemu-img convert raw -> qcow2" "$t_convert_q" -
row "qemu-img convert raw -> qcow2 + sync" "$t_convert_q_sync" -
row "zstd -d (archive, to /dev/null)" "$t_unzstd" -
row "vmdump restore .vma -> raw" "$t_raw" $((rss_raw >> 10))
row "vmdump restore .vma.zst -> raw" "$t_zraw" $((rss_zraw >> 10))
row "vmdump restore .vma -> qcow2" "$t_q" $((rss_q >> 10))
row "vmdump restore .vma.zst -> qcow2" "$t_zq" $((rss_zq >> 10))
if [[ -n $shm ]]; then
  row "qemu-img convert raw -> raw (tmpfs)" "${T[convert_shm]}" -
  row "vmdump restore .vma -> raw (tmpfs)" "${T[shm]}" -
fi
echo "ratio restore to raw / qemu-img convert to raw:        $(python3 -c "print(f'{$r_raw / $r_convert:.2f}')") (target >= 0.9)"
echo "ratio restore to raw / qemu-img convert to raw + sync: $(python3 -c "print(f'{$r_raw / $r_convert_sync:.2f}')") (both durable)"
if [[ -n $shm ]]; then
  echo "ratio restore to raw / qemu-img convert to raw, on tmpfs: $(python3 -c "print(f'{${T[convert_shm]} / ${T[shm]}:.2f}')") (the data paths alone)"
fi
echo "ratio restore to qcow2 / qemu-img convert to qcow2 + sync: $(python3 -c "print(f'{$t_convert_q_sync / $t_q:.2f}')") (both durable)"
echo "MiB/s are over the ${size_gib} GiB disk size"
