#!/usr/bin/env bash
# Before/after: runs benchmark scripts with the vmdump of an earlier revision and with this
# tree's, alternately (old, new, old, new), so both meet the same machine load, and keeps each
# run's output. Every script compares vmdump against baselines in the same run, so compare the
# vmdump/baseline ratios of the two binaries, not their absolute times.
#
# Usage: bench/compare.sh REV [SCRIPT ARGS...]   e.g. bench/compare.sh 3ae2c48 bench/backup.sh 2
# The old binary is built in a scratch worktree (BENCH_DIR, default /var/tmp). Outputs go to
# $BENCH_DIR/vmdump-compare.<rev>/{old,new}-<n>.txt; the rows naming vmdump are printed.
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
rev=$(git -C "$root" rev-parse --short "${1:?usage: bench/compare.sh REV SCRIPT [ARGS...]}")
shift
script=${1:?usage: bench/compare.sh REV SCRIPT [ARGS...]}
shift
base=${BENCH_DIR:-/var/tmp}
old_tree="$base/vmdump-old-$rev"
out="$base/vmdump-compare.$rev"
mkdir -p "$out"

if [ ! -d "$old_tree" ]; then
  git -C "$root" worktree add -q --detach "$old_tree" "$rev"
fi
cargo build --release -q -p vmdump --manifest-path "$old_tree/Cargo.toml"
old_bin="$(cd "$old_tree" && root=$old_tree bench_target_dir)/release/vmdump"
new_bin=$(bench_vmdump)

for ((n = 1; n <= ${RUNS:-2}; n++)); do
  for which in old new; do
    bin=$old_bin
    [ "$which" = new ] && bin=$new_bin
    echo "compare: $script with the $which vmdump (run $n)"
    VMDUMP=$bin bash "$script" "$@" >"$out/$which-$n.txt"
    grep -iE 'vmdump|ratio|convert|zstd|cp ' "$out/$which-$n.txt" | sed "s/^/  $which: /"
  done
done
