#!/usr/bin/env bash
# The README demo, on a fresh Debian 12 machine as root:
#   1. installs what is needed and builds the tiny test guest (scripts/setup.sh), builds vmdump;
#   2. creates a config root in a temp dir (storage `local`, VM 100 = the test guest, whose
#      writer keeps rewriting files on its ext4 data disk);
#   3. starts the VM, backs it up live while it writes (fs-freeze through the guest agent,
#      copy-before-write, zstd), verifies the archive, restores it as VM 200 and checks the
#      restored disk's filesystem and the writer's pattern from the host;
#   4. stops the VM and prints what it did.
# DEMO_KEEP=1 keeps the temp dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "set-up: packages and the test guest (scripts/setup.sh)"
bash scripts/setup.sh

step "build vmdump (release)"
cargo build --release -q -p vmdump
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
vmdump="$target_dir/release/vmdump"

demo=$(mktemp -d "${DEMO_DIR:-/var/tmp}/vmdump-demo.XXXXXX")
export VMDUMP_ROOT="$demo/etc" VMDUMP_RUN_DIR="$demo/run"
cleanup() {
  "$vmdump" vm stop 100 >/dev/null 2>&1 || true
  if [ "${DEMO_KEEP:-0}" = 1 ]; then echo "demo files kept in $demo"; else rm -rf "$demo"; fi
}
trap cleanup EXIT

step "config root $VMDUMP_ROOT"
mkdir -p "$demo/etc/qemu-server" "$demo/store/images/100" "$demo/run"
printf 'dir: local\n\tpath %s\n\tcontent images,backup\n' "$demo/store" > "$demo/etc/storage.cfg"
cp .cache/testguest/vm.conf "$demo/etc/qemu-server/100.conf"
cp .cache/testguest/data.raw "$demo/store/images/100/vm-100-disk-0.raw"
cat "$demo/etc/storage.cfg" "$demo/etc/qemu-server/100.conf"

step "start VM 100 (the test guest, TCG) and wait for its writer"
"$vmdump" vm start 100 --accel tcg
serial="$demo/run/100/serial.log"
for _ in $(seq 600); do grep -q 'vmdump-testguest: ready' "$serial" 2>/dev/null && break; sleep 0.1; done
grep -q 'vmdump-testguest: ready' "$serial" || { echo "the test guest did not boot" >&2; exit 1; }
tick() { grep -o 'vmdump-writer: tick [0-9]*' "$serial" | tail -1 | awk '{print $3}'; }
sleep 2
echo "guest is up, writer at tick $(tick)"

step "live backup while the guest writes (throttled to 16 MiB/s so it takes a few seconds)"
before=$(tick)
"$vmdump" backup 100 --storage local --compress zstd --bwlimit 16384 \
  --notes-template '{{guestname}} demo backup'
after=$(tick)
echo "the guest's writer went on from tick $before to tick $after during the backup"
archive=$(ls "$demo"/store/dump/vzdump-qemu-100-*.vma.zst)
"$vmdump" vm status 100

step "verify the archive"
"$vmdump" vma list "$archive"
"$vmdump" vma verify -v "$archive"
python3 - "$archive" <<'PY'
# An independent reader (dissect.archive) must see the same devices and config.
import io, sys, subprocess
from dissect.archive.vma import VMA
raw = subprocess.run(["zstd", "-q", "-d", "-c", sys.argv[1]], check=True, capture_output=True).stdout
vma = VMA(io.BytesIO(raw))
print("dissect.archive:", [(d.name, d.size) for d in vma.devices()],
      "config lines:", len(vma.config("qemu-server.conf").splitlines()))
PY

step "restore it as VM 200 and check the restored disk from the host"
"$vmdump" restore "$archive" 200 --storage local
restored=$(ls "$demo"/store/images/200/vm-200-disk-0.*)
cat "$demo/etc/qemu-server/200.conf"
bash testguest/check.sh "$restored" "$before"

step "stop VM 100"
"$vmdump" vm stop 100

step "done"
cat <<EOF
Backed up VM 100 live ($(du -h "$archive" | cut -f1) archive: $(basename "$archive")) while its
writer ran (ticks $before -> $after), with the guest's filesystems frozen for the job start;
the archive verified with vmdump's own reader and with dissect.archive; the restored disk of
VM 200 passed e2fsck -fn (clean, no journal recovery) and the writer's pattern check.
EOF
