#!/usr/bin/env bash
# tests.selftest_names: every selftest runner (LLMQ_SELFTEST_MAIN in
# proto/llmq_check.h) refuses a test name it does not know (exit 2), so a
# typo in CMake cannot turn a test into a pass; each also runs one named
# test and prints its summary line.
set -u
bin="${LLMQ_BIN_DIR:?}"
status=0
# driver:a fast test it knows
for pair in broker_selftest:queue worker_selftest:limiter proto_selftest:duration \
            llmq_batch_selftest:store llmq_client_selftest:jsonl kit_selftest:rmtree; do
  driver="${pair%%:*}"
  known="${pair#*:}"
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
  # A known name next to an unknown one: still refused, nothing run.
  out=$("$bin/$driver" "$known" no-such-test 2>&1)
  rc=$?
  if [ "$rc" -ne 2 ] || echo "$out" | grep -q " run, "; then
    echo "FAIL: $driver $known no-such-test exited $rc (expected 2, nothing run)" >&2
    status=1
  fi
  out=$("$bin/$driver" "$known" 2>/dev/null)
  rc=$?
  if [ "$rc" -ne 0 ] || ! echo "$out" | grep -q "^$driver: 1 run, 0 failed$"; then
    echo "FAIL: $driver $known exited $rc, output: $out" >&2
    status=1
  else
    echo "ok: $driver $known runs one test"
  fi
done
# proto_codec keeps its own argument parsing (its cases are not selftests).
if [ -x "$bin/proto_codec" ]; then
  "$bin/proto_codec" no-such-test >/dev/null 2>&1
  rc=$?
  if [ "$rc" -ne 2 ]; then
    echo "FAIL: proto_codec no-such-test exited $rc (expected 2)" >&2
    status=1
  else
    echo "ok: proto_codec refuses an unknown test name"
  fi
else
  echo "FAIL: proto_codec not built in $bin" >&2
  status=1
fi
# A test that fails makes its runner exit 1 (kit_selftest fails on purpose).
"$bin/kit_selftest" fails >/dev/null 2>&1
rc=$?
if [ "$rc" -ne 1 ]; then
  echo "FAIL: kit_selftest fails exited $rc (expected 1)" >&2
  status=1
else
  echo "ok: a failed selftest exits 1"
fi
exit $status
