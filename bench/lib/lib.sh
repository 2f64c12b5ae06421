# Shell helpers of the llmq benchmarks: `source bench/lib/lib.sh`.
# The accounting is benchlib.py's (one implementation for both languages).
#
#   bench_start VAR CMD...   start CMD in the background, wait (up to
#                            $BENCH_READY_S seconds, default 15) for its
#                            `ready` line; sets VAR_pid and VAR_<key> for
#                            each key=value of the line (e.g. sim_url,
#                            broker_frontend). Returns 1 if it never came.
#   bench_stop PID...        SIGTERM, then SIGKILL after 5 s; reaps them
#   bench_cpu PID...         CPU seconds (user+system) of the pids' process trees
#   bench_rss PID...         resident KiB of the pids' process trees
#   bench_stats X X X        "median min max"
#   bench_timed CMD...       run CMD; prints "wall_s cpu_s rc" on the last line

_bench_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_bench_py() { /usr/bin/python3 "$_bench_lib_dir/benchlib.py" "$@"; }

bench_start() {
  local var="$1"; shift
  local out line key val word fd
  out="$(mktemp -u)"
  mkfifo "$out"
  "$@" >"$out" &
  eval "${var}_pid=$!"
  exec {fd}<"$out"
  rm -f "$out"
  while IFS= read -r -t "${BENCH_READY_S:-15}" -u "$fd" line; do
    case "$line" in
      "ready "*)
        for word in ${line#ready * }; do
          key="${word%%=*}"; val="${word#*=}"
          [ "$key" != "$word" ] && printf -v "${var}_${key//[^A-Za-z0-9_]/_}" '%s' "$val"
        done
        # keep draining the child's stdout so it never blocks on a full pipe
        cat <&"$fd" >/dev/null &
        exec {fd}<&-
        return 0 ;;
    esac
  done
  exec {fd}<&-
  return 1
}

bench_stop() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  return 0
}

bench_cpu() { _bench_py cpu "$@"; }
bench_rss() { _bench_py rss "$@"; }
bench_stats() { _bench_py stats "$@"; }
bench_timed() { _bench_py timed -- "$@"; }
