#!/usr/bin/env bash
# NBD throughput vs a local `qemu-img convert`, in one run on one image.
#   bash bench/nbd.sh [size-GiB]        (default 2; needs ~4x that in free space under $TMPDIR)
# 1. baseline: qemu-img convert -O raw src.qcow2 local.raw
# 2. client read: our pipelined client reads a qemu-storage-daemon export of src.qcow2 into a
#    sparse raw file (examples/nbd_bench.rs read)
# 3. server write: qemu-img convert -n src.qcow2 nbd+unix://... into our server, which stores
#    into a raw file (examples/nbd_bench.rs serve)
# Prints MiB/s for each and the ratios (target >= 0.8).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
size_gib=${1:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/nbd-bench.XXXXXX")
qsd_pid=""
srv_pid=""
cleanup() {
  [ -n "$qsd_pid" ] && kill "$qsd_pid" 2>/dev/null || true
  [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --release -p vmdump-nbd --example nbd_bench
bench_bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/nbd_bench"

size=$((size_gib << 30))
echo "== building a ${size_gib} GiB qcow2 with incompressible data (last 1/8 left sparse)"
data_mib=$(( (size_gib << 10) * 7 / 8 ))
head -c "$((data_mib << 20))" /dev/urandom > "$work/data.raw"
truncate -s "$size" "$work/data.raw"
qemu-img convert -q -f raw -O qcow2 "$work/data.raw" "$work/src.qcow2"
rm -f "$work/data.raw"
sync
# Warm the page cache so every variant reads the source the same way.
cat "$work/src.qcow2" > /dev/null

mibps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
now() { date +%s.%N; }

baseline() {
  local t0 t1
  t0=$(now); qemu-img convert -f qcow2 -O raw "$work/src.qcow2" "$work/local.raw"; sync -f "$work/local.raw"; t1=$(now)
  rm -f "$work/local.raw"; sync
  awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}

client_read() {
  local t0 t1
  qemu-storage-daemon \
    --blockdev "{\"driver\":\"qcow2\",\"node-name\":\"fmt0\",\"read-only\":true,\"file\":{\"driver\":\"file\",\"filename\":\"$work/src.qcow2\",\"read-only\":true}}" \
    --nbd-server "addr.type=unix,addr.path=$work/qsd.sock" \
    --export '{"type":"nbd","id":"e0","node-name":"fmt0","name":"disk"}' > "$work/qsd.log" 2>&1 &
  qsd_pid=$!
  for _ in $(seq 100); do [ -S "$work/qsd.sock" ] && break; sleep 0.05; done
  sleep 0.2
  t0=$(now); "$bench_bin" read "$work/qsd.sock" disk "$work/client.raw" > /dev/null; t1=$(now)
  kill "$qsd_pid"; wait "$qsd_pid" 2>/dev/null || true; qsd_pid=""
  qemu-img compare -q -f raw -F qcow2 "$work/client.raw" "$work/src.qcow2"
  rm -f "$work/client.raw" "$work/qsd.sock"; sync
  awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}

server_write() {
  local t0 t1
  "$bench_bin" serve "$work/srv.sock" backup "$work/server.raw" "$size" > "$work/serve.log" &
  srv_pid=$!
  for _ in $(seq 100); do [ -S "$work/srv.sock" ] && break; sleep 0.05; done
  t0=$(now)
  qemu-img convert -n -f qcow2 -O raw "$work/src.qcow2" "nbd+unix:///backup?socket=$work/srv.sock"
  wait "$srv_pid"; srv_pid=""
  t1=$(now)
  grep -q 'reason: Disc' "$work/serve.log"
  qemu-img compare -q -f raw -F qcow2 "$work/server.raw" "$work/src.qcow2"
  rm -f "$work/server.raw"; sync
  awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}

min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'; }
base_s=""; read_s=""; write_s=""
# The machine is shared and its disk speed drifts: interleave the variants and keep each
# one's best of $rounds rounds.
rounds=${ROUNDS:-3}
for round in $(seq "$rounds"); do
  b=$(baseline); r=$(client_read); w=$(server_write)
  echo "round $round: baseline $(mibps "$size" "$b") MiB/s, client read $(mibps "$size" "$r") MiB/s, server write $(mibps "$size" "$w") MiB/s"
  base_s=$(min "$base_s" "$b"); read_s=$(min "$read_s" "$r"); write_s=$(min "$write_s" "$w")
done
base=$(mibps "$size" "$base_s"); read=$(mibps "$size" "$read_s"); write=$(mibps "$size" "$write_s")

echo
printf '| size | baseline qemu-img convert | client read | ratio | server write | ratio |\n'
printf '| %s GiB | %s MiB/s | %s MiB/s | %s | %s MiB/s | %s |\n' "$size_gib" "$base" "$read" \
  "$(awk -v a="$read" -v b="$base" 'BEGIN { printf "%.2f", a / b }')" "$write" \
  "$(awk -v a="$write" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
