#!/usr/bin/env bash
# Builds the tiny vmdump test guest from Debian 12 packages into <repo>/.cache/testguest/:
#   vmlinuz      Debian bookworm kernel (linux-image-6.1.0-N-amd64, apt-get download + dpkg-deb -x)
#   initrd.gz    busybox-static, qemu-ga + its libraries, virtio/ext4/acpi modules, /init, writer
#   data.raw     64 MiB ext4 data disk template (fixed UUID, seeded files)
#   vm.conf      qemu-server config for VMID 100 using the files above (from testguest/vm.conf)
# Idempotent and cached: nothing is rebuilt while the outputs exist and the hash of the inputs
# (this folder's build inputs) is unchanged. `--force` rebuilds. See testguest/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out="$root/.cache/testguest"
uuid=7e57d15c-0000-4000-8000-00000000da7a

inputs=(build.sh init writer shutdown vm.conf)
hash=$(cd "$here" && cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)
outputs=(vmlinuz initrd.gz data.raw vm.conf kernel-version)

# One build at a time (several checkouts' setup may run at once).
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

cached=1
[ "${1:-}" = --force ] && cached=0
[ "$(cat "$out/build.hash" 2>/dev/null)" = "$hash" ] || cached=0
for f in "${outputs[@]}"; do [ -s "$out/$f" ] || cached=0; done
if [ "$cached" = 1 ]; then
  echo "testguest: up to date in $out (kernel $(cat "$out/kernel-version"))"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb modinfo mkfs.ext4 python3 gzip ldd sha256sum; do
  command -v "$tool" >/dev/null || { echo "testguest: missing tool $tool" >&2; exit 1; }
done
busybox=/bin/busybox
qga=/usr/sbin/qemu-ga
[ -x "$busybox" ] || { echo "testguest: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
[ -x "$qga" ] || { echo "testguest: $qga missing (apt-get install qemu-guest-agent)" >&2; exit 1; }

mkdir -p "$out"
work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. The current bookworm kernel: linux-image-amd64 depends on linux-image-6.1.0-N-amd64.
resolve_kernel() { apt-cache depends linux-image-amd64 2>/dev/null |
  awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}'; }
kpkg=$(resolve_kernel || true)
if [ -z "$kpkg" ]; then
  apt-get update -q >/dev/null
  kpkg=$(resolve_kernel)
fi
[ -n "$kpkg" ] || { echo "testguest: cannot resolve the linux-image-6.1.0-N-amd64 package" >&2; exit 1; }
echo "testguest: kernel package $kpkg"
# apt warns that _apt cannot write into our temp dir when run as root; that is harmless.
(cd "$work" && apt-get download -q "$kpkg" 2>&1) | grep -v '^W: Download is performed unsandboxed' || true
deb=$(ls "$work"/linux-image-*.deb 2>/dev/null || true)
[ -n "$deb" ] || { echo "testguest: apt-get download $kpkg failed" >&2; exit 1; }
dpkg-deb -x "$deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
moddir="$work/kernel/lib/modules/$kver"

# 2. The initramfs tree.
rd="$work/initrd"
mkdir -p "$rd"/{bin,sbin,etc/acpi/PWRF,lib/modules,proc,sys,dev,mnt,tmp,run,var}
cp "$busybox" "$rd/bin/busybox"
ln -s busybox "$rd/bin/sh"
install -m 755 "$here/init" "$rd/init"
install -m 755 "$here/writer" "$rd/bin/writer"
install -m 755 "$here/shutdown" "$rd/sbin/shutdown"
printf '#!/bin/sh\nexec /sbin/shutdown -h\n' > "$rd/etc/acpi/PWRF/00000080"
chmod 755 "$rd/etc/acpi/PWRF/00000080"
echo vmdump-testguest > "$rd/etc/hostname"

# qemu-ga and the shared libraries it links (paths as ldd reports them).
cp "$qga" "$rd/sbin/qemu-ga"
ldd "$qga" | awk '/=> \// {print $3} /^\t\// {print $1}' | while read -r lib; do
  mkdir -p "$rd$(dirname "$lib")"
  cp -L "$lib" "$rd$lib"
done

# Modules and their dependencies, in load order (depends= of each .ko's modinfo).
find_ko() { find "$moddir/kernel" -name "$1.ko" -o -name "$(echo "$1" | tr _ -).ko" | head -n1; }
declare -A seen=()
order=()
add_module() {
  local m=$1 ko dep
  [ -n "${seen[$m]:-}" ] && return
  seen[$m]=1
  ko=$(find_ko "$m")
  [ -n "$ko" ] || { echo "testguest: module $m not found in $kver (built in?)" >&2; exit 1; }
  for dep in $(modinfo -F depends "$ko" | tr , ' '); do add_module "$dep"; done
  cp "$ko" "$rd/lib/modules/$m.ko"
  order+=("$m")
}
for m in crc32c_generic virtio_pci virtio_blk virtio_console ext4 button evdev; do add_module "$m"; done
printf '%s\n' "${order[@]}" > "$rd/etc/modules.order"
echo "testguest: modules ${order[*]}"

(cd "$rd" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 > "$work/initrd.gz"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

# 3. Data disk template: 64 MiB ext4 with a fixed UUID and seeded files whose checksums are
#    stored on the disk itself (seed/SHA256SUMS).
seed="$work/seed-root"
mkdir -p "$seed/seed" "$seed/data"
python3 - "$seed/seed" <<'PY'
import hashlib, sys
d = sys.argv[1]
# 2 MiB of incompressible but deterministic bytes (SHA-256 in counter mode).
with open(f"{d}/random.bin", "wb") as f:
    for i in range(2 * 1024 * 1024 // 32):
        f.write(hashlib.sha256(b"vmdump-seed-%d" % i).digest())
# 1 MiB of text, one numbered line per 64 bytes.
with open(f"{d}/lines.txt", "wb") as f:
    for i in range(1024 * 1024 // 64):
        f.write(("vmdump-seed line %08d" % i).ljust(63).encode() + b"\n")
PY
(cd "$seed/seed" && sha256sum random.bin lines.txt > SHA256SUMS)
echo 0 > "$seed/tick"
rm -f "$work/data.raw"
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -U "$uuid" -L vmdump-data \
  -E root_owner=0:0,hash_seed="$uuid" -d "$seed" "$work/data.raw" 64M >/dev/null

# 4. qemu-server config for the test VM (VMID 100), see vm.conf for the placeholders.
sed -e "s|@VMID@|100|g" -e "s|@TESTGUEST@|$out|g" "$here/vm.conf" > "$work/vm.conf"

echo "$kver" > "$work/kernel-version"
for f in "${outputs[@]}"; do mv -f "$work/$f" "$out/$f"; done
echo "$hash" > "$out/build.hash"

echo "testguest: built in $out"
echo "  kernel  $out/vmlinuz ($kver)"
echo "  initrd  $out/initrd.gz ($(du -k "$out/initrd.gz" | cut -f1) KiB)"
echo "  disk    $out/data.raw (64 MiB ext4, UUID $uuid)"
echo "  config  $out/vm.conf"
