#!/usr/bin/env bash
# Build every cargo-fuzz target under fuzz/fuzz_targets and run each for a short,
# time-boxed smoke (FUZZ_SECS, default 20 s). Works on stable Rust: cargo-fuzz needs
# nightly-only flags (-Z sanitizer), which RUSTC_BOOTSTRAP=1 unlocks on stable.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${FUZZ_SECS:-20}"
export RUSTC_BOOTSTRAP=1
# The fuzz workspace has its own target dir unless the caller chose one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/fuzz/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$root/fuzz"
targets=()
for f in fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
done
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz-smoke: no fuzz targets found" >&2
    exit 1
fi

# Seed corpora: small valid archives, so fuzzing starts past the checksums.
cargo run -q --release --bin make_seeds

# Build all first so a compile error fails fast.
for t in "${targets[@]}"; do
    cargo fuzz build --sanitizer none "$t"
done

failed=0
for t in "${targets[@]}"; do
    echo "fuzz-smoke: running $t for ${secs}s"
    mkdir -p "corpus/$t"
    if ! cargo fuzz run --sanitizer none "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=262144 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1; then
        echo "fuzz-smoke: $t FAILED (crash input under fuzz/artifacts/$t)" >&2
        failed=1
    fi
done
if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets ran ${secs}s each without a crash"
