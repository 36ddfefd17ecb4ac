#!/usr/bin/env bash
# Backup fleecing: what a backup costs the guest's writes, and what fleecing costs the backup.
#
# 1. Guest impact with a slow backup target (a dump dir on the test kit's faultfs, writes
#    capped at $RATE, default 30M = 30 MiB/s): guest-path writes of 1 MiB (HMP `qemu-io -d
#    scsi0/virtio-backend "write ..."`, the paused VM's device path through the
#    copy-before-write filter, timed per write twice: the monitor command's round trip, and
#    qemu-io's own timing of the write in QEMU's block layer, which a busy main loop (any
#    reader of the export) does not shorten) into a disk whose first half is data, from the end of
#    that half downwards, so they hit data clusters the backup has not saved yet: with no backup, during a normal
#    (push) backup, during a backup with --fleecing. Throughput and p50/p99 latency.
#    Targets: fleecing keeps >= 80% of the no-backup throughput and p99 <= 2x no-backup;
#    without fleecing the guest drops towards the target's speed.
#    And the floor of fleecing: the same writes through QEMU's copy-before-write filter over an
#    empty fleecing image, with no backup reading ("filter alone").
# 2. Backup time on a fast target (local dump dir), no guest writes: push vs fleecing, best of
#    ROUNDS (default 3). Target: fleecing <= 1.10x push.
#
# Usage: bench/fleecing.sh [size-GiB]   (default 1; BENCH_DIR picks the scratch directory,
# RATE the slow target's cap, WRITES the guest writes per scenario, default 64).
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init fleecing 1 "$@"
rate=${RATE:-30M}
writes=${WRITES:-64}
qemu_pid=
fs_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  [ -n "$fs_pid" ] && kill "$fs_pid" 2>/dev/null || true
  sleep 0.5
  umount "$work/slow" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

vmdump=$(bench_vmdump)
cargo build --release -q -p vmdump-testkit --bin faultfs --manifest-path "$root/Cargo.toml"
faultfs="$(bench_target_dir)/release/faultfs"

img="$work/store/images/100/vm-100-disk-0.raw"
mkdir -p "$(dirname "$img")" "$work/etc/qemu-server" "$work/run/100" "$work/slow-backing" \
  "$work/slow" "$work/fast"
bench_half_data "$img" "$size"
printf 'dir: local\n\tpath %s\n\tcontent images,backup\n' "$work/store" > "$work/etc/storage.cfg"
printf 'memory: 256\nname: bench\nscsi0: local:100/vm-100-disk-0.raw,size=%sG\n' "$size_gib" \
  > "$work/etc/qemu-server/100.conf"
cat "$img" > /dev/null

"$faultfs" "$work/slow-backing" "$work/slow" --write-rate "$rate" > "$work/faultfs.log" 2>&1 &
fs_pid=$!
for _ in $(seq 100); do grep -q mounted "$work/faultfs.log" 2>/dev/null && break; sleep 0.1; done
grep -q mounted "$work/faultfs.log"

# A paused VM with the runtime's layout (qmp.sock for vmdump) and a second monitor for the
# guest-write driver.
# stdbuf: QEMU prints qemu-io's per-write timing on its stdout; line-buffered, it can be read
# after every scenario.
stdbuf -oL qemu-system-x86_64 -nodefaults -display none -m 256 -S -machine q35,accel=kvm:tcg \
  -qmp "unix:$work/run/100/qmp.sock,server=on,wait=off" \
  -qmp "unix:$work/ctl.sock,server=on,wait=off" \
  -blockdev "driver=file,node-name=file-scsi0,filename=$img,cache.direct=off" \
  -blockdev "driver=raw,node-name=drive-scsi0,file=file-scsi0" \
  -device virtio-blk-pci,drive=drive-scsi0,id=scsi0 >"$work/qemu.log" 2>&1 &
qemu_pid=$!
for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.1; done

# guest_writes [FLEECING-IMAGE]: WRITES timed 1 MiB guest-path writes from the end of the data
# half downwards; prints "MiB/s p50_ms p99_ms". With an image (an empty qcow2), the writes go
# through a copy-before-write filter over it that nothing reads from (attached as vmdump
# attaches it, removed after): QEMU's own cost of copy-before-write, the floor of fleecing.
guest_writes() {
  python3 - "$work/ctl.sock" "$size" "$writes" "${1:-}" "$work/qemu.log" <<'PY'
import json, os, re, socket, sys, time
path, size, n, image, qlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rwb")
def cmd(c, a=None):
    f.write(json.dumps({"execute": c, **({"arguments": a} if a else {})}).encode() + b"\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
json.loads(f.readline()); cmd("qmp_capabilities")
dev = "/machine/peripheral/scsi0/virtio-backend"
def must(c, a):
    r = cmd(c, a)
    if "error" in r:
        sys.exit(f"{c} failed: {r}")
if image:
    must("blockdev-add", {"driver": "qcow2", "node-name": "bench-fl", "discard": "unmap",
        "file": {"driver": "file", "filename": image, "discard": "unmap"}})
    must("blockdev-add", {"driver": "copy-before-write", "node-name": "bench-cbw",
        "file": "drive-scsi0", "target": "bench-fl", "on-cbw-error": "break-snapshot",
        "cbw-timeout": 45})
    must("qom-set", {"path": dev, "property": "drive", "value": "bench-cbw"})
lat = []
log_at = os.path.getsize(qlog)
t0 = time.monotonic()
for i in range(n):
    off = size // 2 - (i + 1) * (1 << 20)
    t = time.monotonic()
    r = cmd("human-monitor-command", {"command-line":
        f'qemu-io -d scsi0/virtio-backend "write -P {i % 200 + 1} {off} 1M"'})
    lat.append(time.monotonic() - t)
    if r.get("return", "x") != "":
        sys.exit(f"write failed: {r}")
total = time.monotonic() - t0
if image:
    must("qom-set", {"path": dev, "property": "drive", "value": "drive-scsi0"})
    must("blockdev-del", {"node-name": "bench-cbw"})
    must("blockdev-del", {"node-name": "bench-fl"})
# qemu-io's own timing of each write ("... and N ops/sec"): the write in QEMU's block layer,
# without the monitor's round trip.
time.sleep(0.2)
with open(qlog, "rb") as f:
    f.seek(log_at)
    inside = [1 / float(m) for m in re.findall(rb"and ([0-9.]+) ops/sec", f.read())]
if len(inside) != n:
    sys.exit(f"found {len(inside)} qemu-io timings in {qlog}, not {n}")
def stats(v):
    total_s = sum(v) if v is inside else total
    v = sorted(v)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))] * 1000
    return f"{n / total_s:.1f} {pick(0.5):.2f} {pick(0.99):.2f}"
print(stats(lat), stats(inside))
PY
}

# during ARGS...: guest writes while `vmdump backup 100 ARGS` runs to the slow target (the
# writes start once the backup reads, and must end before it does).
during() {
  rm -rf "$work/slow/dump"
  VMDUMP_RUN_DIR="$work/run" "$vmdump" backup 100 --root "$work/etc" --dumpdir "$work/slow/dump" \
    "$@" > "$work/during.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do
    grep -q "started backup task" "$work/during.log" 2>/dev/null && break
    sleep 0.1
  done
  local res; res=$(guest_writes)
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "bench: the backup ended before the guest writes did; make the disk bigger" >&2
    exit 1
  fi
  wait "$pid" || { cat "$work/during.log" >&2; exit 1; }
  rm -rf "$work/slow/dump" # the disk may be small
  echo "bench: guest writes during 'backup $*': $res (MiB/s p50 p99, monitor-timed then in QEMU)" >&2
  echo "$res"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
read -r none_tp none_p50 none_p99 none_itp none_ip50 none_ip99 < <(guest_writes)
echo "bench: guest writes without a backup: $none_tp $none_p50 $none_p99 (MiB/s p50 p99)" >&2
qemu-img create -q -f qcow2 "$work/filter.qcow2" "$size"
read -r cbw_tp cbw_p50 cbw_p99 cbw_itp cbw_ip50 cbw_ip99 < <(guest_writes "$work/filter.qcow2")
rm -f "$work/filter.qcow2"
echo "bench: guest writes through a copy-before-write filter alone: $cbw_tp $cbw_p50 $cbw_p99 (MiB/s p50 p99)" >&2
read -r push_tp push_p50 push_p99 push_itp push_ip50 push_ip99 < <(during)
read -r fl_tp fl_p50 fl_p99 fl_itp fl_ip50 fl_ip99 < <(during --fleecing 1)
load_mid=$(cut -d' ' -f1-3 /proc/loadavg)

# Backup time on a fast target, no guest writes.
now() { date +%s.%N; }
fast_once() {
  rm -rf "$work/fast/dump"
  sync
  local t0; t0=$(now)
  VMDUMP_RUN_DIR="$work/run" "$vmdump" backup 100 --root "$work/etc" --dumpdir "$work/fast/dump" \
    "$@" > "$work/fast.log" 2>&1 || { cat "$work/fast.log" >&2; exit 1; }
  local t; t=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
  rm -rf "$work/fast/dump"
  echo "bench: fast target, backup $*: $t s" >&2
  echo "$t"
}
t_push=1e9; t_fl=1e9
for ((r = 1; r <= ${ROUNDS:-3}; r++)); do
  t_push=$(python3 -c "print(min($t_push, $(fast_once)))")
  t_fl=$(python3 -c "print(min($t_fl, $(fast_once --fleecing 1)))")
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

pct() { python3 -c "print(f'{100 * $1 / $2:.0f}%')"; }
x() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
cat <<EOF
vmdump fleecing benchmark: ${size_gib} GiB raw disk (first half data), paused VM, $(nproc) CPUs,
slow target: faultfs --write-rate $rate; $writes guest writes of 1 MiB to unsaved clusters
load average: $load_before (start), $load_mid (after the guest-write runs), $load_end (end)
guest writes          MiB/s   of none   p50 ms   p99 ms   p99 vs none
no backup          $(printf '%8s %9s %8s %8s %12s' "$none_tp" 100% "$none_p50" "$none_p99" 1.00x)
filter alone       $(printf '%8s %9s %8s %8s %12s' "$cbw_tp" "$(pct "$cbw_tp" "$none_tp")" "$cbw_p50" "$cbw_p99" "$(x "$cbw_p99" "$none_p99")")
push backup        $(printf '%8s %9s %8s %8s %12s' "$push_tp" "$(pct "$push_tp" "$none_tp")" "$push_p50" "$push_p99" "$(x "$push_p99" "$none_p99")")
fleecing backup    $(printf '%8s %9s %8s %8s %12s' "$fl_tp" "$(pct "$fl_tp" "$none_tp")" "$fl_p50" "$fl_p99" "$(x "$fl_p99" "$none_p99")")
in QEMU (qemu-io's own timing of each write, without the monitor's round trip):
no backup          $(printf '%8s %9s %8s %8s %12s' "$none_itp" 100% "$none_ip50" "$none_ip99" 1.00x)
filter alone       $(printf '%8s %9s %8s %8s %12s' "$cbw_itp" "$(pct "$cbw_itp" "$none_itp")" "$cbw_ip50" "$cbw_ip99" "$(x "$cbw_ip99" "$none_ip99")")
push backup        $(printf '%8s %9s %8s %8s %12s' "$push_itp" "$(pct "$push_itp" "$none_itp")" "$push_ip50" "$push_ip99" "$(x "$push_ip99" "$none_ip99")")
fleecing backup    $(printf '%8s %9s %8s %8s %12s' "$fl_itp" "$(pct "$fl_itp" "$none_itp")" "$fl_ip50" "$fl_ip99" "$(x "$fl_ip99" "$none_ip99")")
targets: fleecing >= 80% of none, p99 <= 2.00x none
backup time, fast target (best of ${ROUNDS:-3}): push ${t_push} s, fleecing ${t_fl} s, $(x "$t_fl" "$t_push") (target <= 1.10x)
EOF
