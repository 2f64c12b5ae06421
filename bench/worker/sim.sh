# Sourced by bench/worker/callgrind.sh and syscalls.sh: start_sim starts
# llmq-sim from $BIN at 200 ms (log in $OUT/sim.log), sets $url to its base
# URL and stops it when the script exits.
start_sim() {
  local log=$OUT/sim.log
  : >"$log"
  "$BIN/llmq-sim" --port 0 --quiet --latency-ms 200 >"$log" &
  sim=$!
  trap 'kill $sim 2>/dev/null || true' EXIT
  for _ in $(seq 100); do grep -q ready "$log" && break; sleep 0.1; done
  url=$(sed -n 's/^ready llmq-sim url=//p' "$log")
}
