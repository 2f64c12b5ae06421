#!/usr/bin/env bash
# Runs the in-process unit tests (class selftests, codec tables) under
# valgrind memcheck: any error or definite leak fails. Integration tests that
# spawn processes, and batch.store (whose crash test forks a child that dies
# mid-transaction on purpose), are covered by the ASan+UBSan build instead.
#   bash scripts/valgrind.sh [BUILD_DIR]   (default: build/, built by scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
UNIT='^(proto\.(msg|value|roundtrip|malformed|sockets|fuzz_corpus)|broker\.(queue|metrics|actor)|batch\.manager|worker\.(limiter|breaker|sse|provider|config|engine)|client\.selftest)$'

ctest --test-dir "$dir" --show-only=json-v1 >"$dir/tests.json"
python3 - "$dir/tests.json" "$UNIT" >"$dir/valgrind-tests.txt" <<'PY'
import json, re, shlex, sys
tests = json.load(open(sys.argv[1]))["tests"]
for t in tests:
    if re.match(sys.argv[2], t["name"]):
        print(t["name"] + "\t" + " ".join(shlex.quote(c) for c in t["command"]))
PY

fail=0; n=0
while IFS=$'\t' read -r name cmd; do
  n=$((n + 1))
  log="$dir/valgrind-$name.log"
  if eval valgrind --quiet --error-exitcode=99 --leak-check=full \
       --errors-for-leak-kinds=definite --show-leak-kinds=definite \
       --suppressions=scripts/valgrind.supp "$cmd" >"$log" 2>&1; then
    echo "valgrind: $name ok"
  else
    echo "valgrind: $name FAILED (see $log)"; tail -30 "$log"; fail=$((fail + 1))
  fi
done <"$dir/valgrind-tests.txt"
echo "valgrind: $((n - fail)) passed, $fail failed"
[ "$fail" -eq 0 ]
