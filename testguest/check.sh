#!/usr/bin/env bash
# Verifies a raw image of the test guest's data disk (e.g. a restored backup) from the host,
# without mounting it. Usage: check.sh [--recover] <disk.raw> [min-tick]
#   --recover  copy the image and let e2fsck replay the journal first (crash-consistent
#              images, e.g. a backup taken without fsfreeze); without it `e2fsck -fn` must
#              find the filesystem clean
#   min-tick   fail unless /tick is at least this value
# A qcow2 image must be converted first: qemu-img convert -O raw in.qcow2 out.raw
# Prints "ok tick=<T> slots=<K>" and exits 0 when the pattern of testguest/writer holds.
set -euo pipefail
recover=0
if [ "${1:-}" = --recover ]; then recover=1; shift; fi
img=${1:?usage: check.sh [--recover] <disk.raw> [min-tick]}
min=${2:-0}
[ -f "$img" ] || { echo "check: $img: no such file" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ "$recover" = 1 ]; then
  cp --sparse=always "$img" "$tmp/disk.raw"
  img="$tmp/disk.raw"
  set +e; e2fsck -fy "$img" >"$tmp/fsck.log" 2>&1; rc=$?; set -e
  [ "$rc" -le 1 ] || { cat "$tmp/fsck.log" >&2; echo "check: e2fsck -fy exit $rc" >&2; exit 1; }
fi
if dumpe2fs -h "$img" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'; then
  echo "check: $img: the ext4 journal needs recovery (crash-consistent image); use --recover" >&2
  exit 1
fi
if ! e2fsck -fn "$img" >"$tmp/fsck.log" 2>&1; then
  cat "$tmp/fsck.log" >&2
  echo "check: e2fsck -fn reports problems in $img" >&2
  exit 1
fi
mkdir "$tmp/root"
debugfs -R "rdump / $tmp/root" "$img" >/dev/null 2>"$tmp/debugfs.log" || {
  cat "$tmp/debugfs.log" >&2; echo "check: debugfs rdump failed" >&2; exit 1; }
exec python3 - "$tmp/root" "$min" <<'PY'
import hashlib, os, re, sys
root, minimum = sys.argv[1], int(sys.argv[2])
SLOTS = 64
def fail(msg):
    print(f"check: {msg}", file=sys.stderr); sys.exit(1)
def expected(n):
    line = f"vmdump-testguest {n}\n".encode()
    size = 1000 + 4096 * (n % 16)
    return (line * (size // len(line) + 1))[:size]
# Seed files written by build.sh.
seed = os.path.join(root, "seed")
for entry in open(os.path.join(seed, "SHA256SUMS")):
    digest, name = entry.split()
    got = hashlib.sha256(open(os.path.join(seed, name), "rb").read()).hexdigest()
    if got != digest:
        fail(f"seed/{name}: sha256 {got}, expected {digest}")
try:
    tick = int(open(os.path.join(root, "tick")).read().strip())
except (OSError, ValueError) as e:
    fail(f"/tick unreadable: {e}")
held = {}
data = os.path.join(root, "data")
for name in sorted(os.listdir(data)):
    if name.startswith("."):
        continue  # a write in flight (.new) when the image was taken
    m = re.fullmatch(r"slot-(\d\d)", name)
    if not m:
        fail(f"data/{name}: unexpected file")
    body = open(os.path.join(data, name), "rb").read()
    first = body.split(b"\n", 1)[0].decode(errors="replace")
    hm = re.fullmatch(r"vmdump-testguest (\d+)", first)
    if not hm:
        fail(f"data/{name}: bad first line {first!r}")
    n = int(hm.group(1))
    if n % SLOTS != int(m.group(1)):
        fail(f"data/{name}: holds tick {n}, which belongs to another slot")
    if body != expected(n):
        fail(f"data/{name}: content of tick {n} differs from the pattern ({len(body)} bytes)")
    if n > tick + 1:
        fail(f"data/{name}: holds tick {n}, newer than /tick {tick}")
    held[n % SLOTS] = n
for n in range(max(1, tick - SLOTS + 1), tick + 1):
    got = held.get(n % SLOTS)
    ok = got == n or (n == tick - SLOTS + 1 and got == tick + 1)
    if not ok:
        fail(f"data/slot-{n % SLOTS:02d}: holds tick {got}, expected {n} (tick {tick})")
if tick < minimum:
    fail(f"/tick is {tick}, expected at least {minimum}")
print(f"ok tick={tick} slots={len(held)}")
PY
