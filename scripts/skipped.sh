#!/usr/bin/env bash
# Lists the tests of the last ctest run in BUILD_DIR that were skipped (exit
# 77, SKIP_RETURN_CODE) with their reasons (the `SKIP: ...` line each one
# prints on stderr). ctest itself names them under "did not run" but does
# not say why.
#   bash scripts/skipped.sh [BUILD_DIR]      (default: build)
set -euo pipefail
dir="${1:-build}"
log="$dir/Testing/Temporary/LastTest.log"
[ -f "$log" ] || { echo "skipped.sh: no $log (run ctest first)" >&2; exit 2; }
awk '
  /^[0-9]+\/[0-9]+ Test: / { name = $3; next }
  /^SKIP: / && name != "" { sub(/^SKIP: /, ""); reasons[name] = $0; order[++n] = name }
  END {
    if (n == 0) { print "skipped tests: none"; exit }
    print "skipped tests: " n
    for (i = 1; i <= n; i++) printf "  %-32s %s\n", order[i], reasons[order[i]]
  }' "$log"
