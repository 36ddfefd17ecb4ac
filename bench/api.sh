#!/usr/bin/env bash
# REST API benchmark: latency of `GET /api/v1/storages/bench/backups` on a storage holding
# 10 000 backups (bench_fake_backups: 100 guests x 100) and of `GET /api/v1/guests` (the
# guests page: 100 VM configs, each with its last backup found on that storage), over HTTPS
# with keep-alive, N requests each after 5 warm-up requests; p50/p99/max. Baseline in the same
# run: the whole `vmdump list bench --output-format json` process (best of 5). Memory: the
# server's RSS idle after start and idle again after the load. Targets: p99 < 100 ms,
# idle RSS < 50 MiB.
#
# Usage: bench/api.sh [backups] [requests]   (defaults 10000 and 200; BENCH_DIR: scratch dir)
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
count=${1:-10000}
requests=${2:-200}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/vmdump-bench-api.XXXXXX")
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

source "$root/bench/lib.sh"
vmdump=$(bench_vmdump)

mkdir -p "$work/etc/qemu-server" "$work/run" "$work/tasks"
bench_fake_backups "$work/store" "$count" >"$work/etc/storage.cfg"
guests=$((count / 100 > 0 ? count / 100 : 1))
for ((i = 0; i < guests; i++)); do
  printf 'name: bench%d\nmemory: 512\nvirtio0: bench:%d/vm-%d-disk-0.raw,size=1G\n' \
    "$i" $((100 + i)) $((100 + i)) >"$work/etc/qemu-server/$((100 + i)).conf"
done
export VMDUMP_ROOT="$work/etc" VMDUMP_RUN_DIR="$work/run" VMDUMP_TASK_DIR="$work/tasks" \
  VMDUMP_SERVER_DIR="$work/server" VMDUMP_STATE_DIR="$work/state"
secret=$("$vmdump" token add bench | tail -n 1)

"$vmdump" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 100); do
  grep -q '^serving ' "$work/serve.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^serving //p' "$work/serve.out")
[ -n "$url" ] || { cat "$work/serve.err" >&2; exit 1; }
sleep 1
rss_start=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")

best_ms=999999
for _ in 1 2 3 4 5; do
  start=$(date +%s%N)
  "$vmdump" list bench --output-format json >/dev/null
  ms=$((($(date +%s%N) - start) / 1000000))
  ((ms < best_ms)) && best_ms=$ms
done

python3 - "$url" "$secret" "$requests" "$work/server/cert.pem" <<'PY'
import http.client, json, ssl, sys, time, urllib.parse
url, secret, n, cert = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(url)
ctx = ssl.create_default_context(cafile=cert)
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)
hdr = {"Authorization": "Bearer " + secret}
def get(path):
    conn.request("GET", path, headers=hdr)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (path, r.status, body[:200])
    return body
for path, what in [("/api/v1/storages/bench/backups", "list of backups"), ("/api/v1/guests", "guests page")]:
    for _ in range(5):
        body = get(path)
    items = len(json.loads(body))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        get(path)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(f"{what:16} {path}: {items} items, {len(body)} bytes; "
          f"p50 {p(0.50):.1f} ms, p99 {p(0.99):.1f} ms, max {times[-1]:.1f} ms (target p99 < 100 ms)")
PY
sleep 2
rss_end=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
echo "baseline: vmdump list bench --output-format json (whole process): ${best_ms} ms"
echo "server RSS idle: $((rss_start / 1024)) MiB after start, $((rss_end / 1024)) MiB after the load (target < 50 MiB)"
