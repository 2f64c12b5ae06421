#!/usr/bin/python3
"""client.cli: the `llmq` command line: --help and --version, usage errors
(exit 2), an unreachable broker (exit 3), status and ping against a real
broker, chat streaming, and the embedded local cluster: `llmq run` with no
broker starts llmq-broker, workers and llmq-sim, labels the results as
simulated, and leaves no child behind, also when it is interrupted."""
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import (MODEL, Cluster, bin_path, chat_hash, check, read_jsonl, run_llmq,  # noqa
                        verify_output, wait_until, write_input)
from llmqtest import broker_ping, die_with_parent, sanitizer_report, skip_if_default_broker, temp_dir  # noqa


def embedded_endpoint(stderr):
    """(endpoint, broker name) of the embedded cluster llmq reported."""
    for line in stderr.splitlines():
        if "started a local cluster: broker " in line:
            endpoint = line.split("broker ", 1)[1].split(",", 1)[0]
            name = line.rsplit("(broker name ", 1)[1].rstrip(")") if "(broker name " in line else None
            return endpoint, name
    return None, None


def gone(endpoint, name):
    """The embedded broker `name` no longer answers at endpoint. Another
    broker may: the ephemeral port is free again, and a broker of a test
    running in parallel (another embedded cluster included: each has its
    own name, llmq-local-<pid>) may have taken it (zmq hands out
    tcp://...:* ports from 49152 up)."""
    pong = broker_ping(endpoint, timeout=0.3)
    return pong is None or pong.split(" ", 1)[0] != name


def main():
    tmp = temp_dir("llmq-client-cli-")
    # --help everywhere, --version
    for args in (["--help"], ["run", "--help"], ["chat", "--help"], ["status", "--help"],
                 ["ping", "--help"]):
        rc, out, err = run_llmq(args)
        check(rc == 0 and "usage: llmq" in out, "%r: rc %d, %s" % (args, rc, out))
    rc, out, _ = run_llmq(["run", "--help"])
    for flag in ("--output", "--concurrency", "--broker", "--model", "--workers", "--config",
                 "--max-attempts", "--deadline-ms", "--quiet", "Exit codes"):
        check(flag in out, "run --help lacks %s" % flag)
    rc, out, _ = run_llmq(["--version"])
    check(rc == 0 and out.startswith("llmq 0."), "--version: %r" % out)

    # usage errors: exit 2 with a message
    inp = os.path.join(tmp, "in.jsonl")
    expect = write_input(inp, 40, fault_every=(0, 0))
    for args in (["bogus"], ["run"], ["run", inp], ["run", inp, "-o", "x", "--nope"],
                 ["run", inp, "-o", "x", "--concurrency", "lots"],
                 ["run", "/nonexistent/in.jsonl", "-o", os.path.join(tmp, "x.jsonl")],
                 ["run", inp, "-o", os.path.join(inp, "dir", "out.jsonl")],  # a file as dir
                 ["chat"], ["status", "extra"]):
        rc, out, err = run_llmq(args)
        check(rc == 2 and err.strip(), "%r: rc %d (expected 2), stderr %r" % (args, rc, err))

    # unreachable broker: exit 3
    rc, _, err = run_llmq(["ping", "--broker", "tcp://127.0.0.1:1", "--timeout", "300"])
    check(rc == 3 and "no answer" in err, "ping unreachable: %d %r" % (rc, err))
    rc, _, err = run_llmq(["run", inp, "-o", os.path.join(tmp, "u.jsonl"), "--broker",
                           "tcp://127.0.0.1:1", "--timeout", "300"])
    check(rc == 3 and "does not answer" in err, "run unreachable: %d %r" % (rc, err))

    cluster = Cluster(workers=2, capacity=8)
    try:
        fe = cluster.broker.frontend
        rc, out, err = run_llmq(["ping", "--broker", fe])
        check(rc == 0 and "pong from" in out and "llmq-broker" in out, "ping: %r %r" % (out, err))
        rc, out, err = run_llmq(["status", "--broker", fe])
        check(rc == 0 and "workers (2)" in out and "NAME" in out and "counters" in out
              and MODEL in out, "status table:\n%s" % out)
        rc, out, err = run_llmq(["status", "--broker", fe, "--json"])
        check(rc == 0 and '"workers"' in out, "status --json")
        rc, out, err = run_llmq(["chat", "--broker", fe, "--model", MODEL, "hi", "there"])
        want = "sim-" + chat_hash(MODEL, [{"role": "user", "content": "hi there"}])
        check(rc == 0 and out.startswith(want), "chat: rc %d out %r err %r" % (rc, out, err))
        rc, out, err = run_llmq(["chat", "--broker", fe, "--model", MODEL, "--no-stream", "hi there"])
        check(rc == 0 and out.startswith(want), "chat --no-stream: %r" % out)
        rc, out, err = run_llmq(["chat", "--broker", fe, "--model", MODEL, "x [[sim:fail=400]]"])
        check(rc == 1 and "invalid_request" in err, "chat error: %d %r" % (rc, err))
        # The C API example (examples/llmq_example.c) against the same cluster.
        p = subprocess.run([bin_path("llmq_example"), fe, MODEL], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        out = p.stdout.decode()
        check(p.returncode == 0 and "sync: sim-" in out and "async: 20 of 20" in out
              and "stream: sim-" in out, "llmq_example: %d %r %r" % (p.returncode, out, p.stderr))
    finally:
        cluster.close()

    # A broker whose queue is tiny answers `overloaded`: llmq run backs off
    # and sends those lines again, so they still end ok.
    small = Cluster(workers=1, capacity=2, broker_flags=("--max-queue", "4"))
    try:
        out_path = os.path.join(tmp, "overloaded.jsonl")
        rc, out, err = run_llmq(["run", inp, "-o", out_path, "--broker", small.broker.frontend,
                                 "--model", MODEL, "--concurrency", "32", "--verbose"])
        check(rc == 0, "overloaded run: rc %d\n%s\n%s" % (rc, out, err[-2000:]))
        check("overloaded answers retried" in err, "no overloaded retries seen: %s" % err[-500:])
        verify_output(out_path, expect)
    finally:
        small.close()

    embedded_in_netns()
    print("client.cli: ok")


def embedded_in_netns():
    """The embedded-cluster half in a network namespace of its own (unshare
    -rn): there no broker can answer at the default endpoint (127.0.0.1:5555),
    whatever runs on this machine. Without namespaces, in this namespace if
    no broker answers there; else the test is skipped (exit 77)."""
    me = os.path.abspath(__file__)
    unshare = shutil.which("unshare")
    if unshare:
        r = subprocess.run([unshare, "-rn", "sh", "-c", "ip link set lo up && echo netns-ok"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode == 0 and b"netns-ok" in r.stdout:
            r = subprocess.run([unshare, "-rn", "sh", "-c",
                                'ip link set lo up && exec "$0" "$1" --embedded',
                                sys.executable, me], timeout=110)
            check(r.returncode == 0, "embedded-cluster half failed (exit %d)" % r.returncode)
            return
    skip_if_default_broker("no network namespaces here (unshare -rn): the embedded-cluster "
                           "half of client.cli cannot run")
    embedded()


def embedded():
    """`llmq run` with no --broker and nothing at the default endpoint."""
    tmp = temp_dir("llmq-client-cli-embedded-")
    inp = os.path.join(tmp, "in.jsonl")
    expect = write_input(inp, 40, fault_every=(0, 0))
    env = {"OPENAI_API_KEY": "", "LLMQ_BIN_DIR": os.path.dirname(bin_path("llmq"))}
    out_path = os.path.join(tmp, "embedded.jsonl")
    rc, out, err = run_llmq(["run", inp, "-o", out_path, "--workers", "2"], env=env)
    check(rc == 0, "embedded run: rc %d\n%s\n%s" % (rc, out, err))
    check("SIMULATED results (llmq-sim)" in out, "no simulated label:\n%s" % out)
    check("40 ok, 0 failed" in out, "summary:\n%s" % out)
    # sim-model is the default model of the simulator cluster
    verify = {cid: v for cid, v in expect.items()}
    verify_output(out_path, verify)
    endpoint, name = embedded_endpoint(err)
    check(endpoint and name and gone(endpoint, name),
          "embedded broker %r (%r) still answers after exit" % (endpoint, name))

    # Models named by the input are served by the embedded workers; a
    # config file gives the provider and the default model.
    mixed = os.path.join(tmp, "mixed.jsonl")
    with open(mixed, "w") as f:
        f.write('{"custom_id": "a", "prompt": "x", "model": "custom-model"}\n')
        f.write("plain text line\n")
    config = os.path.join(tmp, "llmq.yaml")
    with open(config, "w") as f:
        f.write("provider: sim   # the cluster starts llmq-sim for it\n"
                "models:\n  - config-model\ncapacity: 8\n")
    out_path = os.path.join(tmp, "mixed-out.jsonl")
    rc, out, err = run_llmq(["run", mixed, "-o", out_path, "--workers", "1", "--config", config],
                            env=env)
    check(rc == 0 and "SIMULATED" in out, "config run: %d\n%s\n%s" % (rc, out, err))
    rows = {r["custom_id"]: r for r in read_jsonl(out_path)}
    check(rows["a"]["response"]["body"]["model"] == "custom-model", "input model: %r" % rows["a"])
    check(rows["line-2"]["response"]["body"]["model"] == "config-model",
          "config default model: %r" % rows["line-2"])

    # A config the workers reject is a config error: exit 2, no child left.
    with open(config, "w") as f:
        f.write("provider: sim\nbogus_key: 1\n")
    rc, out, err = run_llmq(["run", mixed, "-o", out_path + ".bad", "--workers", "1",
                             "--config", config], env=env)
    check(rc == 2 and "bogus_key" in err, "bad config: %d %r" % (rc, err))

    # SIGTERM in the middle of an embedded run: children stop, OUT stays valid.
    big = os.path.join(tmp, "big.jsonl")
    write_input(big, 3000, fault_every=(0, 0))
    out_path = os.path.join(tmp, "interrupted.jsonl")
    p = subprocess.Popen([bin_path("llmq"), "run", big, "-o", out_path, "--workers", "1",
                          "--capacity", "2", "--sim-latency-ms", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, **env), preexec_fn=die_with_parent)
    def lines_done():
        try:
            with open(out_path, "rb") as f:
                return f.read().count(b"\n") >= 10
        except FileNotFoundError:
            return False
    wait_until("some finished lines", lines_done, 60)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    check(p.returncode == 130, "interrupted run: rc %d %r" % (p.returncode, err[-300:]))
    report = sanitizer_report(err.decode(errors="replace"))
    check(not report, "sanitizer report from the interrupted llmq run: %s" % report)
    endpoint, name = embedded_endpoint(err.decode())
    check(endpoint and name and gone(endpoint, name), "embedded broker survived SIGTERM")
    with open(out_path, "rb") as f:
        data = f.read()
    check(data.endswith(b"\n") and data.count(b"\n") >= 10, "interrupted OUT not whole lines")
    print("client.cli: embedded cluster ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--embedded"]:
        embedded()
    else:
        main()
