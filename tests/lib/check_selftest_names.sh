#!/usr/bin/env bash
# tests.selftest_names: every selftest driver refuses a test name it does
# not know (exit 2), so a typo in CMake cannot turn a test into a pass.
set -u
bin="${LLMQ_BIN_DIR:?}"
status=0
for driver in broker_selftest worker_selftest proto_selftest proto_codec llmq_batch_selftest; do
  if [ ! -x "$bin/$driver" ]; then
    echo "FAIL: $driver not built in $bin" >&2
    status=1
    continue
  fi
  "$bin/$driver" no-such-test >/dev/null 2>&1
  rc=$?
  if [ "$rc" -ne 2 ]; then
    echo "FAIL: $driver no-such-test exited $rc (expected 2)" >&2
    status=1
  else
    echo "ok: $driver refuses an unknown test name"
  fi
done
exit $status
