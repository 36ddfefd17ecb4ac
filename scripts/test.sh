#!/usr/bin/env bash
# The whole test suite: unit, integration against real QEMU, interop with
# independent tools, and a short fuzz smoke. `bash scripts/test.sh`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
if [ -x scripts/fuzz-smoke.sh ]; then
  bash scripts/fuzz-smoke.sh
fi
