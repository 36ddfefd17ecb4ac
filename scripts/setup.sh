#!/usr/bin/env bash
# Installs everything vmdump's build, tests, demo and benchmarks need on a
# fresh Debian 12 machine, then builds the tiny test guest. Idempotent: a
# second run only checks. Needs root (apt-get).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# Debian packages. QEMU must be 7.2 across the board: installing
# qemu-system-x86 removes a newer preinstalled qemu-utils backport, so
# qemu-utils (and qemu-block-extra) are pinned to qemu-system-x86's version.
# fuse3: fusermount3 for the test kit's fault-injecting FUSE filesystem (faultfs).
pkgs=(qemu-system-x86 qemu-utils qemu-block-extra qemu-guest-agent busybox-static
      e2fsprogs kmod lzop zstd gzip pigz cpio ovmf time fuse3
      # containers: LXC and its busybox template, rsync (suspend mode), btrfs (snapshot mode),
      # setfacl/setfattr for the metadata tests, newuidmap for unprivileged containers, GNU tar
      lxc lxc-templates rsync btrfs-progs acl attr libcap2-bin uidmap tar
      # runtime libraries of Proxmox's own `vma` (../shared/tools/pve-vma), the reference in tests
      libglib2.0-0 libzstd1 zlib1g libuuid1 libaio1
      # a real local MTA as /usr/sbin/sendmail for the sendmail notification test
      msmtp-mta
      # the web UI's browser tests: headless Chromium driven through WebDriver
      chromium chromium-driver)

need_apt=0
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt=1
done
qemu-img --version 2>/dev/null | grep -q 'version 7\.2' || need_apt=1

if [ "$need_apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  apt-get install -y -q --allow-downgrades \
    "${pkgs[@]/#qemu-utils/qemu-utils=$qver}" "qemu-block-extra=$qver" \
    2>&1 | grep -vE '^(Get|Selecting|Preparing|Unpacking|Setting up|Processing)' || true
  qemu-img --version | grep -q 'version 7\.2' || { echo "setup: qemu-img is not 7.2" >&2; exit 1; }
fi

# Unprivileged containers map their ids to 100000+ (what Proxmox ships); LXC asks
# newuidmap, which needs root's ranges.
for f in /etc/subuid /etc/subgid; do
  grep -q '^root:100000:65536$' "$f" 2>/dev/null || echo 'root:100000:65536' >> "$f"
done

# Python oracle for VMA interop tests (independent reader).
python3 -c 'import dissect.archive' 2>/dev/null || pip install -q dissect.archive

# A real SMTP server for the notification tests (crates/jobs/tests/notify.rs).
python3 -c 'import aiosmtpd' 2>/dev/null || pip install -q aiosmtpd

# The tiny test guest (kernel + initramfs + disks), cached under .cache/.
if [ -x "$root/testguest/build.sh" ]; then
  "$root/testguest/build.sh"
fi
