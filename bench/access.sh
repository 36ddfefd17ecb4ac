#!/usr/bin/env bash
# Archive access benchmark (issue 15): the seekable zstd format against one zstd stream
# (size, compression time, restore time with parallel decompression), and the latency of
# random 4 KiB reads through `vmdump map`'s NBD export, all in one run on the same data.
#
# Usage: bench/access.sh [size-GiB]   (default 2; BENCH_DIR picks the scratch directory)
# Baselines: `zstd -3 -T<cpus>` of the plain archive (one stream, the same library and level
# vmdump used before the seekable format, multi-threaded as vmdump's encoder was), and a
# restore of that stream archive (today's single-stream decompression).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init access 2 "$@"
trap 'kill ${map_pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
vmdump=$(bench_vmdump)
cpus=$(nproc)

img="$work/src.raw"
bench_half_data "$img" "$size"
mkdir -p "$work/etc/qemu-server" "$work/run"
printf 'memory: 256\nscsi0: local:100/vm-100-disk-0.raw,size=%sG\n#qmdump#map:scsi0:drive-scsi0:local::\n' \
  "$size_gib" > "$work/qemu-server.conf"
printf 'dir: local\n\tpath %s\n\tcontent images\n' "$work/store" > "$work/etc/storage.cfg"
"$vmdump" vma create "$work/a.vma" -c "$work/qemu-server.conf" -d "format=raw:drive-scsi0=$img"
cat "$img" "$work/a.vma" > /dev/null

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
timed() { local t0; sync; t0=$(now); "$@"; secs "$t0" "$(now)"; }
best() { python3 -c "print(min(float(x) for x in '$*'.split()))"; }

seekable() {
  rm -f "$work/s.vma.zst"
  "$vmdump" vma create "$work/s.vma.zst" --compress zstd --threads "$cpus" \
    -c "$work/qemu-server.conf" -d "format=raw:drive-scsi0=$img"
}
stream() {
  "$vmdump" vma create - -c "$work/qemu-server.conf" -d "format=raw:drive-scsi0=$img" |
    zstd -q -3 -T"$cpus" -f -o "$work/t.vma.zst"
}
restore() {
  rm -rf "$work/store" "$work/etc/qemu-server/200.conf"
  VMDUMP_RUN_DIR="$work/run" "$vmdump" restore "$1" 200 --root "$work/etc" --storage local \
    >"$work/restore.log" 2>&1 || { cat "$work/restore.log" >&2; exit 1; }
}

declare -A T
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
  echo "bench: round $round"
  T[seekable]+=" $(timed seekable)"
  T[stream]+=" $(timed stream)"
  T[r_seekable]+=" $(timed restore "$work/s.vma.zst")"
  grep -q "decompressed in parallel" "$work/restore.log" || { echo "bench: not parallel" >&2; exit 1; }
  T[r_stream]+=" $(timed restore "$work/t.vma.zst")"
done
for k in "${!T[@]}"; do T[$k]=$(best "${T[$k]}"); done
s_size=$(stat -c %s "$work/s.vma.zst")
t_size=$(stat -c %s "$work/t.vma.zst")
v_size=$(stat -c %s "$work/a.vma")

# Random 4 KiB reads through the NBD export: qemu-io reports each read's rate in ops/s.
latency() { # archive -> "p50_us p99_us"
  local sock="$work/map.sock" out
  "$vmdump" map "$1" --socket "$sock" > "$work/map.out" &
  map_pid=$!
  until grep -q '^serving ' "$work/map.out" 2>/dev/null; do sleep 0.1; done
  out=$(python3 - "$size" "nbd+unix:///drive-scsi0?socket=$sock" <<'PY'
import random, re, subprocess, sys
size, uri = int(sys.argv[1]), sys.argv[2]
rng = random.Random(15)
cmds = []
for _ in range(1000):
    cmds += ["-c", f"read {rng.randrange(size // 4096) * 4096} 4096"]
out = subprocess.run(["qemu-io", "-r", "-f", "raw", *cmds, uri], check=True,
                     capture_output=True, text=True).stdout
lat = sorted(1e6 / float(m) for m in re.findall(r"and ([0-9.]+) ops/sec", out))
assert len(lat) == 1000, len(lat)
print(f"{lat[499]:.0f} {lat[989]:.0f}")
PY
)
  kill "$map_pid"; wait "$map_pid" || true; map_pid=
  echo "$out"
}
read -r p50_plain p99_plain < <(latency "$work/a.vma")
read -r p50_seek p99_seek < <(latency "$work/s.vma.zst")

ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }
echo "vmdump archive access benchmark: ${size_gib} GiB disk, 50% data, $cpus CPUs"
echo "archive sizes: plain $((v_size >> 20)) MiB, seekable zstd $s_size B, one-stream zstd $t_size B"
echo "seekable / stream size: $(ratio "$s_size" "$t_size") (target <= 1.02)"
echo "compress: seekable ${T[seekable]} s (vma create --compress zstd), stream ${T[stream]} s (vma create | zstd -3 -T$cpus); ratio $(ratio "${T[seekable]}" "${T[stream]}")"
echo "restore .vma.zst -> raw: seekable, parallel ${T[r_seekable]} s; one stream ${T[r_stream]} s; speed-up $(ratio "${T[r_stream]}" "${T[r_seekable]}")"
echo "random 4 KiB reads through vmdump map (qemu-io, 1000 reads): plain p50 ${p50_plain} us p99 ${p99_plain} us; seekable zstd p50 ${p50_seek} us p99 ${p99_seek} us"
