#!/usr/bin/env bash
# Mutation testing of the core crates with cargo-mutants (https://mutants.rs).
#
#   bash scripts/mutants.sh                 # every default target, one after the other
#   bash scripts/mutants.sh vma restore     # some targets
#   bash scripts/mutants.sh --diff main     # only mutants in lines changed since `main`
#   MUTANTS_ARGS="-F write_cluster" bash scripts/mutants.sh vma   # extra cargo-mutants args
#
# Targets (name: package, files, tests run for each mutant):
#   vma       vmdump-vma       src/*.rs             unit + integration tests
#   compress  vmdump-compress  src/*.rs             unit tests (cli_tools needs the real tools: slow)
#   nbd       vmdump-nbd       src/proto/**         unit tests + tests/hostile.rs
#   blockdev  vmdump-blockdev  src/memory.rs src/raw.rs  unit tests
#   store     vmdump-store     src/retention.rs src/prune.rs  unit + integration tests
#   engine    vmdump-engine    src/cluster.rs       unit tests (cluster assembly)
#   restore   vmdump-restore   src/pipeline.rs src/plan.rs  unit tests
#
# One mutant at a time (`--in-place` implies `-j 1`; the machine is shared), each test run bounded by a timeout,
# in place (`--in-place`: the 8 GB target dir is reused, not copied). So: commit or stash
# first; an interrupted run is restored by cargo-mutants, but check `git status` after.
# Results: mutants.out/<target>/ (outcomes.json, caught.txt, missed.txt, timeout.txt,
# unviable.txt). Summary per target on stdout; docs/mutation.md records the last full run.
set -euo pipefail -f
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked

diff_base=
if [ "${1:-}" = "--diff" ]; then
  diff_base=$2
  shift 2
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(vma compress nbd blockdev store engine restore)

args_for() {
  case $1 in
    vma) echo "-p vmdump-vma -f crates/vma/src/*.rs --cargo-test-arg=--tests" ;;
    compress) echo "-p vmdump-compress -f crates/compress/src/*.rs --cargo-test-arg=--lib" ;;
    nbd) echo "-p vmdump-nbd -f crates/nbd/src/proto/*.rs --cargo-test-arg=--lib --cargo-test-arg=--test=hostile" ;;
    blockdev) echo "-p vmdump-blockdev -f crates/blockdev/src/memory.rs -f crates/blockdev/src/raw.rs --cargo-test-arg=--lib" ;;
    store) echo "-p vmdump-store -f crates/store/src/retention.rs -f crates/store/src/prune.rs --cargo-test-arg=--tests" ;;
    engine) echo "-p vmdump-engine -f crates/engine/src/cluster.rs --cargo-test-arg=--lib" ;;
    restore) echo "-p vmdump-restore -f crates/restore/src/pipeline.rs -f crates/restore/src/plan.rs --cargo-test-arg=--lib" ;;
    *) echo "unknown target '$1' (vma compress nbd blockdev store engine restore)" >&2; return 1 ;;
  esac
}

diff_file=
if [ -n "$diff_base" ]; then
  diff_file=$(mktemp)
  trap 'rm -f "$diff_file"' EXIT
  git diff "$diff_base" -- crates > "$diff_file"
fi

status=0
for t in "${targets[@]}"; do
  a=$(args_for "$t")
  out=mutants.out/$t
  rm -rf "$out"
  mkdir -p "$out"
  extra=()
  [ -z "$diff_file" ] || extra+=(--in-diff "$diff_file")
  # shellcheck disable=SC2086 # word splitting of the target's arguments is intended
  set +e
  cargo mutants --in-place --timeout "${MUTANTS_TIMEOUT:-30}" --build-timeout 600 \
    --no-shuffle --output "$out" $a "${extra[@]}" ${MUTANTS_ARGS:-}
  rc=$?
  set -e
  # 0: all caught; 2: missed mutants; 3: timeouts; others are failures of the run itself.
  case $rc in 0 | 2 | 3) ;; *) status=$rc ;; esac
  d=$out/mutants.out
  count() { [ -f "$d/$1.txt" ] && wc -l < "$d/$1.txt" || echo 0; }
  echo "mutants: $t caught $(count caught) missed $(count missed) unviable $(count unviable) timeout $(count timeout)"
done
exit "$status"
