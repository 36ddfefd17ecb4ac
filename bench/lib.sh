# Shared pieces of the benchmark scripts: `source "$root/bench/lib.sh"` after setting $root.

# The cargo target directory of the workspace (honours CARGO_TARGET_DIR and config files).
bench_target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# Builds the release `vmdump` binary and prints its path; $VMDUMP names another binary to
# measure instead (bench/compare.sh: an earlier revision's).
bench_vmdump() {
  if [ -n "${VMDUMP:-}" ]; then
    echo "$VMDUMP"
    return
  fi
  cargo build --release -q -p vmdump --manifest-path "$root/Cargo.toml"
  echo "$(bench_target_dir)/release/vmdump"
}

# bench_half_data IMG SIZE [SKIP-MiB]: a sparse disk image of SIZE bytes whose first half is
# data, alternating 64 MiB of random bytes and of repeated text (so a compressor has work to
# do), and whose second half is never written. With SKIP-MiB (a multiple of 4) the data starts
# that far in and what is there (a filesystem) is kept.
bench_half_data() {
  local img=$1 size=$2 skip=${3:-0} chunks i
  truncate -s "$size" "$img"
  chunks=$((size / 2 / (64 << 20)))
  echo "bench: writing $((chunks * 64)) MiB of data into a $((size >> 20)) MiB disk at $skip MiB"
  for ((i = 0; i < chunks; i++)); do
    if ((i % 2 == 0)); then
      head -c $((64 << 20)) /dev/urandom
    else
      # yes dies of SIGPIPE when head is done: not an error (pipefail).
      { yes "vmdump benchmark line $i: the quick brown fox jumps over the lazy dog" || true; } |
        head -c $((64 << 20))
    fi
  done | dd of="$img" bs=4M seek=$((skip / 4)) conv=notrunc status=none
}

# bench_init NAME DEFAULT_GIB [SIZE_GIB]: sets size_gib, size (bytes) and work, a new scratch
# directory under $BENCH_DIR (default /var/tmp) that the caller removes.
bench_init() {
  size_gib=${3:-$2}
  size=$((size_gib << 30))
  work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/vmdump-bench-$1.XXXXXX")
}

# bench_fake_backups STORE COUNT: fills STORE/dump with COUNT backups of COUNT/100 guests (100
# daily backups each; empty .vma.zst files with their .log, every 10th with notes, every 50th
# protected) and prints the storage.cfg of a dir storage `bench` at STORE.
bench_fake_backups() {
  mkdir -p "$1/dump"
  python3 - "$1/dump" "$2" <<'PY'
import datetime, os, sys
d, n = sys.argv[1], int(sys.argv[2])
guests = max(1, n // 100)
start = datetime.datetime(2020, 1, 1, 2, 0, 0)
for i in range(n):
    vmid = 100 + i % guests
    t = start + datetime.timedelta(days=i // guests, minutes=vmid % 60)
    base = f"vzdump-qemu-{vmid}-{t:%Y_%m_%d-%H_%M_%S}"
    open(os.path.join(d, base + ".vma.zst"), "w").close()
    open(os.path.join(d, base + ".log"), "w").close()
    if i % 10 == 0:
        with open(os.path.join(d, base + ".vma.zst.notes"), "w") as f:
            f.write(f"note {i}\n")
    if i % 50 == 0:
        open(os.path.join(d, base + ".vma.zst.protected"), "w").close()
PY
  printf 'dir: bench\n\tpath %s\n\tcontent backup\n\tmax-protected-backups -1\n' "$1"
}

# bench_vm_env: exports the environment of a scratch vmdump installation under $work (config
# root, run dir, TCG) and writes its storage.cfg with one `dir` storage `local` at
# $work/store. VMs are then started exactly as users start them: `vmdump vm start`.
bench_vm_env() {
  export VMDUMP_ROOT="$work/etc" VMDUMP_RUN_DIR="$work/run" VMDUMP_ACCEL=tcg
  mkdir -p "$work/etc/qemu-server" "$work/store/images" "$work/run"
  printf 'dir: local\n\tpath %s\n\tcontent images,backup\n' "$work/store" > "$work/etc/storage.cfg"
}

# bench_vm_check_direct VMID: warns unless every disk of the running VM is opened with
# cache.direct (O_DIRECT), as `vmdump vm start` does where the file system allows it.
bench_vm_check_direct() {
  local pid
  pid=$(cat "$work/run/$1/qemu.pid")
  if tr '\0' '\n' < "/proc/$pid/cmdline" | grep -q '"direct":false'; then
    echo "bench: WARNING: VM $1 has disks without cache.direct (file system without O_DIRECT?)" >&2
  fi
}

# bench_qemu_cpu VMID: CPU seconds (user+system) QEMU of VM VMID has used so far.
bench_qemu_cpu() {
  bench_pid_cpu "$(cat "$work/run/$1/qemu.pid")"
}

# bench_pid_cpu PID: CPU seconds (user+system) process PID has used so far (a QEMU that
# `vmdump vm start` did not start: bench/virtnbd.sh's libvirt domain).
bench_pid_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

# bench_drop_cache FILE...: drops the page cache of FILEs (posix_fadvise DONTNEED), so the
# next contender reads them from the disk like a VM with cache.direct does.
bench_drop_cache() {
  local f
  for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done
}

# bench_timed OUT CMD...: runs CMD under /usr/bin/time; appends to OUT one line
# "wall user sys maxrss_kib minor_faults invol_cs vol_cs". Fails (with CMD's output) if CMD does.
bench_timed() {
  local out=$1; shift
  /usr/bin/time -f '%e %U %S %M %R %c %w' -o "$work/time.last" "$@" >"$work/cmd.last" 2>&1 ||
    { cat "$work/cmd.last" "$work/time.last" >&2; return 1; }
  tail -1 "$work/time.last" >> "$out"
}

# bench_stats FILE COLUMN: "best median worst" of a column of bench_timed lines (1 = wall).
bench_stats() {
  awk -v c="$2" '{ print $c }' "$1" | sort -g |
    awk '{ a[NR] = $1 } END { printf "%s %s %s\n", a[1], a[int((NR + 1) / 2)], a[NR] }'
}

# bench_rounds ROUNDS FUNC NAME...: calls `FUNC NAME` for every contender in each of ROUNDS
# rounds, the order rotating from round to round; FUNC sees the round number (from 1) in $r.
bench_rounds() {
  local rounds=$1 fn=$2 i k
  shift 2
  for ((r = 1; r <= rounds; r++)); do
    for ((i = 0; i < $#; i++)); do
      k=$(((i + r - 1) % $# + 1))
      "$fn" "${!k}"
    done
  done
}

# bench_backup_table OUTPUT-TITLE NAME...: the markdown table of backup contenders, from their
# bench_timed lines in $work/NAME with QEMU's CPU seconds and the output bytes appended
# (columns 8 and 9); MiB/s over $size bytes.
bench_backup_table() {
  local title=$1 c f best med worst cpu qcpu faults cs rss outb
  shift
  echo "| contender | best s | median s | worst s | MiB/s (best) | CPU user+sys s (median) | QEMU CPU s (median) | minor faults | context switches | peak RSS MiB | $title |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for c in "$@"; do
    f="$work/$c"
    read -r best med worst < <(bench_stats "$f" 1)
    cpu=$(awk '{ print $2 + $3 }' "$f" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    qcpu=$(bench_stats "$f" 8 | cut -d' ' -f2)
    faults=$(bench_stats "$f" 5 | cut -d' ' -f2)
    cs=$(awk '{ print $6 + $7 }' "$f" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    rss=$(bench_stats "$f" 4 | cut -d' ' -f3)
    outb=$(tail -1 "$f" | awk '{ print $9 }')
    echo "| $c | $best | $med | $worst | $(awk -v s="$size" -v t="$best" 'BEGIN { printf "%.0f", s / 1048576 / t }') | $cpu | $qcpu | $faults | $cs | $(awk -v k="$rss" 'BEGIN { printf "%.0f", k / 1024 }') | $((outb >> 20)) |"
  done
}

# bench_ratio PEER VMDUMP NOTE: "- VMDUMP vs PEER: **best(PEER) / best(VMDUMP)** (per round
# LO-HI; NOTE)", the spread of the per-round ratios; nothing when either has no lines.
bench_ratio() {
  [ -s "$work/$1" ] && [ -s "$work/$2" ] || return 0
  paste -d' ' <(awk '{ print $1 }' "$work/$1") <(awk '{ print $1 }' "$work/$2") |
    awk -v p="$1" -v v="$2" -v t="$3" -v bp="$(bench_stats "$work/$1" 1 | cut -d' ' -f1)" \
      -v bv="$(bench_stats "$work/$2" 1 | cut -d' ' -f1)" '
      { r = $1 / $2; if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r }
      END { printf "- %s vs %s: **%.2f** (per round %.2f-%.2f; %s)\n", v, p, bp / bv, lo, hi, t }'
}
