#!/usr/bin/env bash
# Mutation testing of the core crates with cargo-mutants (https://mutants.rs).
#
#   bash scripts/mutants.sh                 # every default target, one after the other
#   bash scripts/mutants.sh vma restore     # some targets
#   bash scripts/mutants.sh --diff main     # only mutants in lines changed since `main`
#   MUTANTS_ARGS="-F write_cluster" bash scripts/mutants.sh vma   # extra cargo-mutants args
#   MUTANTS_FILES="crates/vma/src/writer.rs" bash scripts/mutants.sh vma   # only these files
#   bash scripts/mutants.sh --diff HEAD~1 --budget 40   # CI: see below
#
# Targets (name: package, files, tests run for each mutant):
#   vma       vmdump-vma       src/*.rs             unit + integration tests
#   compress  vmdump-compress  src/*.rs             unit tests + tests/seekable.rs (cli_tools needs the real tools: slow)
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
#
# `--budget N` (with `--diff`, what CI runs): does nothing when the diff touches no target
# file; else counts the mutants in the diff (`--list`) over all targets given, skips with a
# `mutants: skipped` line when there are more than N, and otherwise runs them and fails on
# any missed mutant. `--time-limit S`: the mutant runs (not the install or the listing) get
# S seconds in all; then they are interrupted (SIGINT: cargo-mutants puts the source back), a
# `mutants: stopped` line says so, and that is not a failure.
set -euo pipefail -f
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The version docs/mutation.md's scores were taken with.
mutants_version=27.1.0
install_mutants() {
  command -v cargo-mutants >/dev/null || cargo install cargo-mutants --version "$mutants_version" --locked
}

diff_base=
budget=
time_limit=
while [ $# -gt 0 ]; do
  case $1 in
    --diff) diff_base=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --time-limit) time_limit=$2; shift 2 ;;
    *) break ;;
  esac
done
if [ -n "$budget" ] && [ -z "$diff_base" ]; then
  echo "--budget needs --diff" >&2
  exit 1
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(vma compress nbd blockdev store engine restore)

args_for() {
  case $1 in
    vma) echo "-p vmdump-vma -f crates/vma/src/*.rs --cargo-test-arg=--tests" ;;
    compress) echo "-p vmdump-compress -f crates/compress/src/*.rs --cargo-test-arg=--lib --cargo-test-arg=--test=seekable" ;;
    nbd) echo "-p vmdump-nbd -f crates/nbd/src/proto/*.rs --cargo-test-arg=--lib --cargo-test-arg=--test=hostile" ;;
    blockdev) echo "-p vmdump-blockdev -f crates/blockdev/src/memory.rs -f crates/blockdev/src/raw.rs --cargo-test-arg=--lib" ;;
    store) echo "-p vmdump-store -f crates/store/src/retention.rs -f crates/store/src/prune.rs --cargo-test-arg=--tests" ;;
    engine) echo "-p vmdump-engine -f crates/engine/src/cluster.rs --cargo-test-arg=--lib" ;;
    restore) echo "-p vmdump-restore -f crates/restore/src/pipeline.rs -f crates/restore/src/plan.rs --cargo-test-arg=--lib" ;;
    *) echo "unknown target '$1' (vma compress nbd blockdev store engine restore)" >&2; return 1 ;;
  esac
}

# The files a target mutates, as git pathspecs.
files_for() {
  args_for "$1" | tr ' ' '\n' | grep '^crates/'
}

diff_file=
if [ -n "$diff_base" ]; then
  diff_file=$(mktemp)
  trap 'rm -f "$diff_file"' EXIT
  git diff "$diff_base" -- crates > "$diff_file"
fi

if [ -n "$budget" ]; then
  touched=()
  for t in "${targets[@]}"; do
    # shellcheck disable=SC2046 # one pathspec per file glob
    if [ -n "$(git diff --name-only "$diff_base" -- $(files_for "$t"))" ]; then
      touched+=("$t")
    fi
  done
  if [ ${#touched[@]} -eq 0 ]; then
    echo "mutants: no target file changed since $diff_base"
    exit 0
  fi
  install_mutants
  total=0
  for t in "${touched[@]}"; do
    # shellcheck disable=SC2046 # word splitting of the target's arguments is intended
    n=$(cargo mutants --list --in-diff "$diff_file" $(args_for "$t") | grep -c . || true)
    echo "mutants: $t has $n mutants in the diff"
    total=$((total + n))
  done
  if [ "$total" -eq 0 ]; then
    echo "mutants: no mutants in the diff since $diff_base"
    exit 0
  fi
  if [ "$total" -gt "$budget" ]; then
    echo "mutants: skipped, $total mutants in the diff since $diff_base (budget $budget): run scripts/mutants.sh --diff before merging"
    exit 0
  fi
  targets=("${touched[@]}")
fi
install_mutants
deadline=
[ -z "$time_limit" ] || deadline=$((SECONDS + time_limit))

status=0
for t in "${targets[@]}"; do
  a=$(args_for "$t")
  if [ -n "${MUTANTS_FILES:-}" ]; then
    # Instead of the target's files (`-f` in MUTANTS_ARGS would add to them, not replace).
    a=$(echo "$a" | sed -E 's/ -f [^ ]+//g')
    for f in $MUTANTS_FILES; do a+=" -f $f"; done
  fi
  out=mutants.out/$t
  rm -rf "$out"
  mkdir -p "$out"
  extra=()
  [ -z "$diff_file" ] || extra+=(--in-diff "$diff_file")
  limit=()
  if [ -n "$deadline" ]; then
    left=$((deadline - SECONDS))
    if [ "$left" -le 0 ]; then
      echo "mutants: stopped, no time left for $t"
      continue
    fi
    limit=(timeout -s INT -k 60 "$left")
  fi
  set +e
  # shellcheck disable=SC2086 # word splitting of the target's arguments is intended
  "${limit[@]}" cargo mutants --in-place --timeout "${MUTANTS_TIMEOUT:-30}" --build-timeout 600 \
    --no-shuffle --output "$out" $a "${extra[@]}" ${MUTANTS_ARGS:-}
  rc=$?
  set -e
  # 0: all caught; 2: missed mutants; 3: timeouts; 4: nothing to mutate (--in-diff);
  # others are failures of the run itself. Under a budget (CI) a missed mutant fails too.
  case $rc in
    124) echo "mutants: stopped after ${time_limit} s, not all mutants of $t were checked" ;;
    0 | 3 | 4) ;;
    2) [ -z "$budget" ] || status=2 ;;
    *) status=$rc ;;
  esac
  d=$out/mutants.out
  count() { [ -f "$d/$1.txt" ] && wc -l < "$d/$1.txt" || echo 0; }
  echo "mutants: $t caught $(count caught) missed $(count missed) unviable $(count unviable) timeout $(count timeout)"
done
exit "$status"
