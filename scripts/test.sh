#!/usr/bin/env bash
# The whole test suite: unit, integration against real QEMU, interop with
# independent tools, and a short fuzz smoke. `bash scripts/test.sh`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
cargo build --workspace --bins

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?

if [ -x scripts/fuzz-smoke.sh ] || [ -f scripts/fuzz-smoke.sh ]; then
  bash scripts/fuzz-smoke.sh || status=$?
fi

# The failures again at the very end, where a log cut to its tail still shows them: each
# failed test's name and the last lines of what it printed (before any backtrace).
if grep -q '^test .* FAILED$' "$log"; then
  echo "== failed tests =="
  grep '^test .* FAILED$' "$log" | sort -u
  awk '/^---- .* stdout ----$/ { t++; name[t] = $2; n[t] = 0; on = 1; next }
       /^failures:$/ || /^test result:/ || /^Stack backtrace:$/ || /^stack backtrace:$/ { on = 0 }
       on { n[t]++; line[t, n[t]] = $0 }
       END { for (k = 1; k <= t; k++) { printf "== last lines of %s ==\n", name[k]
             for (i = (n[k] > 40 ? n[k] - 39 : 1); i <= n[k]; i++) print line[k, i] } }' "$log"
fi

# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
