#!/usr/bin/env bash
# Container benchmark: archive throughput of a container root with many small files and a few
# large sparse ones, `vmdump backup` (stop mode of a stopped container: the tar writer and the
# in-process zstd) against GNU tar with vzdump's flags piped into `zstd -T0`, in the same run on
# the same page-cached tree; then the frozen window of suspend mode (dir storage) and snapshot
# mode (btrfs on a loop file) of a running busybox container that keeps writing.
#
# Usage: bench/ct.sh [small-files] [sparse-files]   (defaults 40000 and 4; BENCH_DIR picks the
# scratch directory). Needs root, LXC, btrfs-progs, rsync (scripts/setup.sh).
# Target: vmdump rate >= 1.0x GNU tar | zstd -T0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
nsmall=${1:-40000}
nsparse=${2:-4}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/vmdump-bench-ct.XXXXXX")
chmod 755 "$work"
vmids=()
cleanup() {
  for v in "${vmids[@]}"; do lxc-stop -P "$work/run/lxc" -n "$v" -k >/dev/null 2>&1 || true; done
  umount -l -d "$work/btrfs" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
vmdump=$(bench_vmdump)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
export VMDUMP_ROOT=$work/etc VMDUMP_RUN_DIR=$work/run
TAR_FLAGS="--one-file-system -p --sparse --numeric-owner --acls --xattrs --xattrs-include=user.* --xattrs-include=security.capability --warning=no-file-ignored --warning=no-xattr-write"

mkdir -p "$work/etc/lxc" "$work/store" "$work/btrfs"
truncate -s 1G "$work/btrfs.img" && mkfs.btrfs -q "$work/btrfs.img" > /dev/null 2>&1 && mount -o loop "$work/btrfs.img" "$work/btrfs"
printf 'dir: local\n\tpath %s\n\tcontent images,rootdir,backup\n\nbtrfs: bt\n\tpath %s\n\tcontent images,rootdir\n' \
  "$work/store" "$work/btrfs" > "$work/etc/storage.cfg"

# --- throughput -------------------------------------------------------------------------
echo "bench: building a container root: $nsmall small files, $nsparse sparse 1 GiB files"
"$vmdump" ct create 900 busybox --rootfs local:0 --hostname bench > /dev/null
ctroot=$work/store/images/900/subvol-900-disk-0.subvol
python3 - "$ctroot" "$nsmall" "$nsparse" <<'PY'
import os, sys, random
root, n, ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(1)
text = b"vmdump container benchmark: the quick brown fox jumps over the lazy dog\n" * 200
for i in range(n):
    d = os.path.join(root, "usr/share/bench", f"d{i // 500:03d}")
    os.makedirs(d, exist_ok=True)
    size = rnd.randint(200, 12000)
    data = text[:size] if i % 2 else rnd.randbytes(size // 4) + text[: size - size // 4]
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(data)
for j in range(ns):
    p = os.path.join(root, f"var/lib/sparse{j}.img")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.truncate(1 << 30)
        for k in range(16):  # 16 x 4 MiB of data spread over the file
            f.seek(k * (64 << 20))
            f.write(rnd.randbytes(2 << 20) + text * 10)
PY
du -sh --apparent-size "$ctroot" | sed 's/^/bench: apparent size /'
du -sh "$ctroot" | sed 's/^/bench: allocated /'
cat /dev/null > /dev/null
tar cf - -C "$ctroot" . > /dev/null # warm the page cache

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
best() { python3 -c "print(min(float(x) for x in '$*'.split()))"; }

gnu=() gnu1=() ours=()
# Same durability and threads for both: vmdump fsyncs its archive (so the baseline ends with
# `sync <file>`), `zstd -T0` uses every core (so vmdump gets `--zstd <cores>`; its own default,
# vzdump's, is half of them). vmdump compresses at zstd level 1, `zstd` at its default 3.
cores=$(nproc)
for round in 1 2 3 4 5; do
  rm -f "$work"/gnu.tar.zst "$work"/dump/*
  t0=$(now)
  tar cpf - $TAR_FLAGS -C "$ctroot" ./ 2>/dev/null | zstd -q -T0 > "$work/gnu.tar.zst"
  sync "$work/gnu.tar.zst"
  gnu+=("$(secs "$t0" "$(now)")")
  rm -f "$work"/gnu1.tar.zst
  t0=$(now)
  tar cpf - $TAR_FLAGS -C "$ctroot" ./ 2>/dev/null | zstd -q -1 -T0 > "$work/gnu1.tar.zst"
  sync "$work/gnu1.tar.zst"
  gnu1+=("$(secs "$t0" "$(now)")")
  t0=$(now)
  "$vmdump" backup 900 --mode stop --compress zstd --zstd "$cores" --dumpdir "$work/dump" > "$work/backup.log"
  ours+=("$(secs "$t0" "$(now)")")
done
g=$(best "${gnu[@]}")
o=$(best "${ours[@]}")
g1=$(best "${gnu1[@]}")
gsize=$(stat -c %s "$work/gnu.tar.zst")
osize=$(stat -c %s "$work"/dump/*.tar.zst)
tarbytes=$(zstd -dc "$work/gnu.tar.zst" | wc -c)
echo "bench: GNU tar | zstd -T0: ${gnu[*]} s (best $g), archive $gsize bytes"
echo "bench: vmdump backup:       ${ours[*]} s (best $o), archive $osize bytes"
ratio=$(python3 -c "print(f'{$g / $o:.2f}')")
echo "bench: rate ratio vmdump / (GNU tar | zstd -T0): ${ratio}x (target >= 1.0)"
echo "bench: GNU tar | zstd -1 -T0 (same level as vmdump): ${gnu1[*]} s (best $g1), archive $(stat -c %s "$work/gnu1.tar.zst") bytes; ratio $(python3 -c "print(f'{$g1 / $o:.2f}')")x"
echo "bench: tar stream $tarbytes bytes: GNU $(python3 -c "print(f'{$tarbytes / $g / 1048576:.0f}')") MiB/s, vmdump $(python3 -c "print(f'{$tarbytes / $o / 1048576:.0f}')") MiB/s"
# Same content: both list the same members (ours adds the two config files first).
diff <(zstd -dc "$work/gnu.tar.zst" | tar tf - | sort) \
  <(zstd -dc "$work"/dump/*.tar.zst | tar tf - | grep -v '^./etc/vzdump/pct\.' | sort) > /dev/null &&
  echo "bench: member lists identical"

# --- frozen windows ---------------------------------------------------------------------
rcs='#!/bin/sh
mkdir -p /data
( i=0; while :; do i=$((i+1)); echo $i > /data/a; echo $i > /data/b; usleep 2000; done ) </dev/null >/dev/null 2>&1 &
'
window() { # vmid mode -> seconds of the frozen window, one per round
  local v=$1 m=$2
  for round in 1 2 3; do
    "$vmdump" backup "$v" --mode "$m" --compress zstd --dumpdir "$work/dump" | sed -n 's/.*frozen window: \([0-9.]*\) s/\1/p'
    rm -f "$work"/dump/*
  done
}
for spec in "901 local:0 suspend" "902 bt:0 snapshot"; do
  read -r v rootfs mode <<< "$spec"
  "$vmdump" ct create "$v" busybox --rootfs "$rootfs" --hostname w > /dev/null
  vmids+=("$v")
  r=$(grep -o 'subvol-[^,]*' "$work/etc/lxc/$v.conf")
  base=$([[ $rootfs == bt:* ]] && echo "$work/btrfs" || echo "$work/store")
  printf '%s' "$rcs" > "$base/images/$v/$r/etc/init.d/rcS"
  chmod 755 "$base/images/$v/$r/etc/init.d/rcS"
  # the small-file tree too, so the copy has something to do
  cp -a "$ctroot/usr/share/bench" "$base/images/$v/$r/usr/share/"
  "$vmdump" ct start "$v" > /dev/null
  sleep 1
  w=$(window "$v" "$mode" | tr '\n' ' ')
  echo "bench: $mode mode frozen window (s): $w"
done
echo "bench: load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench: load average at the start: $load0"
