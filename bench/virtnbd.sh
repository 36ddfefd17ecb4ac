#!/usr/bin/env bash
# Live backup against virtnbdbackup (libvirt's pull-mode backup: libvirt starts QEMU's backup
# job with an NBD export, virtnbdbackup reads it), like for like with bench/backup.sh: the same
# disk (bench_half_data) in two copies, one under a VM started by `vmdump vm start --paused`, one
# under a libvirt domain started by `virsh start --paused` and configured as vmdump configures
# its VMs (TCG, 256 MiB, one vCPU, an LSI SCSI disk with cache='none' io='threads', i.e.
# cache.direct=on and QEMU's default aio=threads), so no guest runs and every round sees the
# same bytes. Both VMs exist for the whole run (two copies, not one VM after the other: the
# same memory and processes beside every contender). Each contender makes its own output
# durable and nothing else: vmdump fsyncs before the rename; virtnbdbackup 1.9.15 closes its
# files without any fsync, so it is followed by `sync FILE...` of the files it wrote.
#
# Contenders, interleaved in every round (the order rotates from round to round):
#   vmdump-0      vmdump backup --compress 0
#   vnbd          virtnbdbackup -l full; of a raw disk it makes a `copy` (a raw disk has no
#                 checkpoints: it says "switching to backup mode copy") into a sparse raw file
# and with FORMAT=qcow2 (both copies converted to qcow2; virtnbdbackup's own format, a full
# backup with a checkpoint, into its sparse stream format), also:
#   vmdump-zstd1  vmdump backup --compress zstd --zstd 1
#   vnbd-lz4      virtnbdbackup -l full --compress: lz4 (level 2), one thread per disk. Of a
#                 raw disk virtnbdbackup ignores --compress (it writes the raw copy), so this
#                 pair exists with FORMAT=qcow2 only.
# In round 1 every contender's output is checked, untimed: the vmdump archive is extracted
# (`vmdump vma extract`), the virtnbdbackup one restored (`virtnbdrestore`), and each is
# compared with `cmp` against the source image.
#
# Installs what it needs when missing (Debian bookworm: virtnbdbackup, libvirt-daemon-system,
# libvirt-daemon-driver-qemu, libvirt-clients), keeping QEMU at Debian's 7.2. Without systemd
# (a container) it starts virtlogd and libvirtd itself, with a qemu.conf that runs QEMU as
# vmdump does (root, no cgroups, no namespaces, no seccomp sandbox), and at its exit stops them
# and puts the original qemu.conf back. A libvirtd that already runs is used as it is.
#
# Usage: bench/virtnbd.sh [size-GiB]   (default 4, half of it data; ROUNDS (default 3) rounds,
# FORMAT=raw (default) or qcow2, BENCH_DIR (default /var/tmp) for the scratch directory, VMDUMP
# to measure another binary, ONLY="vmdump-0 vnbd" to run a subset). Prints a markdown table
# (best, median and worst wall time, CPU, faults, context switches, peak RSS) and the ratios
# (peer time / vmdump time, > 1 = vmdump faster) of the best times, with the spread of the
# per-round ratios.
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_init virtnbd 4 "$@"
rounds=${ROUNDS:-3}
format=${FORMAT:-raw}
case $format in raw | qcow2) ;; *) echo "bench: FORMAT must be raw or qcow2" >&2; exit 2 ;; esac
vmdump=$(bench_vmdump)
dom="vmdump-bench-$$"
qemu_conf=/etc/libvirt/qemu.conf
vsh() { virsh -q -c qemu:///system "$@"; }

daemons=() conf_saved="" defined=""
cleanup() {
  "$vmdump" vm stop 100 --skiplock >/dev/null 2>&1 || true
  if [ -n "$defined" ]; then
    vsh destroy "$dom" >/dev/null 2>&1 || true
    vsh undefine "$dom" --checkpoints-metadata >/dev/null 2>&1 || true
  fi
  local pid i
  # libvirtd first (it talks to virtlogd), then virtlogd.
  for pid in "${daemons[@]}"; do
    kill "$pid" 2>/dev/null || continue
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  [ -n "$conf_saved" ] && cp -p "$work/qemu.conf.orig" "$qemu_conf"
  rm -rf "$work"
}
trap cleanup EXIT

# install: the Debian packages when missing; QEMU must stay at 7.2 (the version vmdump is
# tested with): should the install bring another qemu-utils, the one of qemu-system-x86 is
# installed again.
install() {
  local p missing=() qv
  for p in virtnbdbackup libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] ||
      missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]}" >&2
    qv=$(dpkg-query -W -f='${Version}' qemu-system-x86)
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
      >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; return 1; }
    if [[ $(qemu-img --version) != *"version 7.2"* ]]; then
      echo "bench: the install changed qemu-utils: installing qemu-utils $qv again" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        --allow-downgrades "qemu-utils=$qv" >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log" >&2; return 1; }
    fi
  fi
  for p in qemu-system-x86_64 qemu-img; do
    [[ $("$p" --version) == *"version 7.2"* ]] ||
      { echo "bench: $p is not QEMU 7.2: $("$p" --version | head -1)" >&2; return 1; }
  done
}

# start_libvirt: virtlogd and libvirtd started by hand (no systemd here) unless they run,
# with a qemu.conf under which QEMU runs as under `vmdump vm start`: as root, in the
# caller's cgroup (a cgroup of its own would get one share of the CPU under load), without
# a mount namespace or seccomp sandbox (vmdump passes no -sandbox). The original file comes
# back at exit.
start_libvirt() {
  local i
  if pgrep -x libvirtd >/dev/null; then
    echo "bench: libvirtd already runs: used with its own $qemu_conf" >&2
  else
    cp -p "$qemu_conf" "$work/qemu.conf.orig"
    conf_saved=1
    cat >"$qemu_conf" <<'EOF'
# Written by vmdump's bench/virtnbd.sh for its run; the original comes back at its exit.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
seccomp_sandbox = 0
EOF
    if ! pgrep -x virtlogd >/dev/null; then
      virtlogd -d -p "$work/virtlogd.pid"
      for ((i = 0; i < 100; i++)); do [ -s "$work/virtlogd.pid" ] && break; sleep 0.1; done
      daemons=("$(cat "$work/virtlogd.pid")")
    fi
    libvirtd -d -p "$work/libvirtd.pid"
    for ((i = 0; i < 100; i++)); do [ -s "$work/libvirtd.pid" ] && break; sleep 0.1; done
    daemons=("$(cat "$work/libvirtd.pid")" "${daemons[@]}")
  fi
  for ((i = 0; i < 100; i++)); do vsh version >/dev/null 2>&1 && return; sleep 0.1; done
  echo "bench: libvirtd does not answer" >&2
  return 1
}

install
# A libvirtd that already runs may run QEMU as another user: let it reach the scratch files.
chmod 0755 "$work"
start_libvirt
bench_vm_env

# The source, and one copy for each VM (two QEMUs cannot both hold the write lock of one image).
img="$work/store/images/100/vm-100-disk-0.$format"
vimg="$work/libvirt/disk.$format"
mkdir -p "$(dirname "$img")" "$work/libvirt"
mkdir -m 1777 "$work/nbd"
if [ "$format" = raw ]; then
  bench_half_data "$img" "$size"
  src=$img
else
  src="$work/src.raw"
  bench_half_data "$src" "$size"
  qemu-img convert -f raw -O qcow2 "$src" "$img"
fi
cp --sparse=always "$img" "$vimg"

printf 'memory: 256\nname: bench\nscsi0: local:100/vm-100-disk-0.%s,size=%sG\n' "$format" \
  "$size_gib" > "$work/etc/qemu-server/100.conf"
"$vmdump" vm start 100 --paused >/dev/null
bench_vm_check_direct 100
vmpid=$(cat "$work/run/100/qemu.pid")

cat >"$work/domain.xml" <<EOF
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='scsi' index='0' model='lsilogic'/>
    <disk type='file' device='disk'>
      <driver name='qemu' type='$format' cache='none' io='threads'/>
      <source file='$vimg'/>
      <target dev='sda' bus='scsi'/>
    </disk>
  </devices>
</domain>
EOF
vsh define "$work/domain.xml" >/dev/null
defined=1
vsh start --paused "$dom" >/dev/null
vpid=$(cat "/run/libvirt/qemu/$dom.pid")
# The libvirt QEMU must open its disk as vmdump's does.
args=$(tr '\0' '\n' < "/proc/$vpid/cmdline")
if [[ $args != *'"aio":"threads"'* || $args != *'"direct":true'* || $args == *'"direct":false'* ]]; then
  echo "bench: WARNING: the libvirt domain's disk is not opened with cache.direct and aio=threads" >&2
fi
[ "$(stat -c %U "/proc/$vpid")" = root ] && ! grep -q machine "/proc/$vpid/cgroup" ||
  echo "bench: WARNING: the libvirt QEMU runs as another user or in a cgroup of its own" >&2

all="vmdump-0 vnbd"
[ "$format" = qcow2 ] && all="$all vmdump-zstd1 vnbd-lz4"
contenders=${ONLY:-$all}

# verify NAME OUT: the output of contender NAME (round 1, untimed) holds the source's bytes.
verify() {
  local name=$1 out=$2 x="$work/verify" disk i
  rm -rf "$x"
  case $name in
    vmdump-*)
      "$vmdump" vma extract "$out"/vzdump-qemu-100-*.vma* "$x" >/dev/null
      disk="$x/disk-drive-scsi0.raw" ;;
    vnbd*)
      virtnbdrestore --raw -n -i "$out" -o "$x" >"$work/restore.log" 2>&1 ||
        { cat "$work/restore.log" >&2; return 1; }
      disk="$x/disk.$format"
      if [ "$format" = qcow2 ]; then
        # The qemu-nbd that virtnbdrestore wrote through may still be exiting (its lock).
        for ((i = 0; i < 50; i++)); do
          qemu-img convert -f qcow2 -O raw "$disk" "$x/disk.raw" 2>/dev/null && break
          sleep 0.2
        done
        [ -e "$x/disk.raw" ] || qemu-img convert -f qcow2 -O raw "$disk" "$x/disk.raw"
        disk="$x/disk.raw"
      fi ;;
  esac
  cmp "$disk" "$src"
  echo "bench: round 1 $name: its output restores to the source's bytes (cmp)" >&2
  rm -rf "$x"
}

# run NAME: one backup by contender NAME; appends its bench_timed line (plus QEMU's CPU
# seconds and the output's allocated bytes) to $work/NAME.
run() {
  local name=$1 out="$work/out" pid=$vmpid q0 q1 bytes
  rm -rf "$out" && mkdir -p "$out"
  bench_drop_cache "$img" "$vimg"
  [[ $name == vnbd* ]] && pid=$vpid
  q0=$(bench_pid_cpu "$pid")
  # virtnbdbackup OUT ARGS...: the backup, then an fsync of each file it wrote.
  # shellcheck disable=SC2016 # expanded by that sh
  local vnbd=(sh -c 'out=$1; shift; virtnbdbackup -o "$out" "$@" && find "$out" -type f -exec sync {} +'
    sh "$out" -d "$dom" -l full -n -S "$work/nbd" -f "$work/nbd/nbd.sock")
  [ "$format" = raw ] && vnbd+=(--raw)
  case $name in
    vmdump-0) bench_timed "$work/$name" "$vmdump" backup 100 --compress 0 --dumpdir "$out" ;;
    vmdump-zstd1)
      bench_timed "$work/$name" "$vmdump" backup 100 --compress zstd --zstd 1 --dumpdir "$out" ;;
    vnbd) bench_timed "$work/$name" "${vnbd[@]}" ;;
    vnbd-lz4) bench_timed "$work/$name" "${vnbd[@]}" --compress ;;
  esac
  q1=$(bench_pid_cpu "$pid")
  bytes=$(du -c -B1 "$out" | tail -1 | cut -f1)
  sed -i "\$s/\$/ $(awk -v a="$q0" -v b="$q1" 'BEGIN { printf "%.2f", b - a }') $bytes/" "$work/$name"
  echo "bench: round $r $name $(tail -1 "$work/$name")" >&2
  ((r == 1)) && verify "$name" "$out"
  return 0
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck disable=SC2086 # one contender a word
bench_rounds "$rounds" run $contenders
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Live backup against virtnbdbackup $(virtnbdbackup -V 2>&1 | tail -1), $(date -u '+%Y-%m-%d %H:%M') UTC:"
echo "${size_gib} GiB $format disk ($((size_gib * 512)) MiB data), VM by \`vmdump vm start --paused\` and libvirt"
echo "$(vsh version | grep -o 'libvirt [0-9.]*' | head -1) domain by \`virsh start --paused\` (QEMU $(qemu-system-x86_64 --version | head -1 | awk '{ print $4 }'), TCG),"
echo "$(nproc) CPUs, $rounds interleaved rounds, load average $load_start at the start, $load_end at the end."
echo
# shellcheck disable=SC2086 # one contender a word
bench_backup_table "output MiB (allocated)" $contenders
echo
if [ "$format" = raw ]; then
  bench_ratio vnbd vmdump-0 "virtnbdbackup's copy of a raw disk into a sparse raw file"
else
  bench_ratio vnbd vmdump-0 "virtnbdbackup's full backup into its stream format"
  bench_ratio vnbd-lz4 vmdump-zstd1 "different compressors: lz4 level 2 against zstd level 1"
fi
