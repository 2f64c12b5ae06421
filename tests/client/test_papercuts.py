#!/usr/bin/python3
"""client.papercuts: the small things a first run trips on (issue 18) and
the files `llmq run` protects (issue 11), each checked as a user meets it:

  - the README's quick-start line, as written, on a clean copy of the tree
    (no out/ directory yet): the output directory is created
  - `-o -` writes the results to stdout; `-` as input reads stdin
  - a rerun of a complete OUT exits 0 and says so
  - `llmq --help` and client/README.md name every command (batch wait too);
    `-h` and `--version` on every binary and `-h` on every llmq command
  - one unit for durations: `2s`, `500ms` accepted; `--max-attempts` is a
    deprecated alias of `--max-dispatches` (a warning)
  - IN and OUT the same file (path, symlink, hard link): refused, exit 2,
    IN untouched; duplicate custom_ids: exit 2 before anything is sent
  - a line over the protocol's frame limit becomes an error line in OUT
  - no broker answering: exit 3 with a clear message, never a hang
  - no "dangling" socket report in any stderr (clusterlib.run_llmq)
Skips (77) if a broker answers at the default endpoint."""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterlib as cl  # noqa: E402
from clusterlib import check, run_llmq  # noqa: E402
from llmqtest import out_line_ok  # noqa: E402

BIN = os.path.dirname(cl.bin_path("llmq"))
ENV = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "", "LLMQ_BIN_DIR": BIN}
EMB = ["--workers", "1", "--sim-latency-ms", "0"]


def write(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(line + "\n")


def t_quickstart(tmp):
    # The README's line, in a clean tree holding only examples/.
    tree = os.path.join(tmp, "tree")
    shutil.copytree(os.path.join(cl.SOURCE_DIR, "examples"), os.path.join(tree, "examples"))
    with open(os.path.join(cl.SOURCE_DIR, "README.md")) as f:
        readme = f.read()
    line = "llmq run examples/prompts.jsonl -o out/results.jsonl"
    check(line in readme, "README quick-start line changed: %r" % line)
    p = subprocess.run([cl.bin_path("llmq")] + line.split()[1:], cwd=tree, env=dict(
        os.environ, **ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    err = p.stderr.decode()
    check(p.returncode == 0, "quick start: rc %d\n%s" % (p.returncode, err[-2000:]))
    check("dangling" not in err, "dangling: %s" % err)
    n = sum(1 for ln in open(os.path.join(tree, "examples", "prompts.jsonl")) if ln.strip())
    check(len(cl.read_jsonl(os.path.join(tree, "out", "results.jsonl"))) == n, "all lines answered")
    # A complete rerun: exit 0 and it says so.
    p = subprocess.run([cl.bin_path("llmq")] + line.split()[1:], cwd=tree, env=dict(
        os.environ, **ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    err = p.stderr.decode()
    check(p.returncode == 0 and "already complete" in err,
          "complete rerun: rc %d %s" % (p.returncode, err))
    check("started a local cluster" not in err, "a complete rerun starts nothing")


def t_stdio(tmp):
    inp = os.path.join(tmp, "in.jsonl")
    write(inp, ['{"custom_id": "a%d", "prompt": "q %d"}' % (i, i) for i in range(20)])
    rc, out, err = run_llmq(["run", inp, "-o", "-", *EMB], env=ENV)
    check(rc == 0, "-o -: rc %d %s" % (rc, err))
    rows = [json.loads(ln) for ln in out.splitlines()]
    check(sorted(r["custom_id"] for r in rows) == sorted("a%d" % i for i in range(20)),
          "-o -: the 20 results on stdout: %r" % out[:300])
    check(not os.path.exists("-") and "lines:" not in out, "no file '-', summary not on stdout")
    # `-` as input: stdin.
    with open(inp, "rb") as f:
        p = subprocess.run([cl.bin_path("llmq"), "run", "-", "-o", os.path.join(tmp, "o.jsonl"),
                            *EMB], stdin=f, env=dict(os.environ, **ENV), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
    check(p.returncode == 0, "stdin: rc %d %s" % (p.returncode, p.stderr.decode()))
    check(len(cl.read_jsonl(os.path.join(tmp, "o.jsonl"))) == 20, "stdin: 20 lines")


def t_help():
    rc, out, _ = run_llmq(["--help"])
    for cmd in ("run", "chat", "status", "ping", "batch submit", "batch status",
                "batch results", "batch wait", "batch cancel", "batch list"):
        check(cmd in out, "llmq --help lacks %r:\n%s" % (cmd, out))
    with open(os.path.join(cl.SOURCE_DIR, "client", "README.md")) as f:
        readme = f.read()
    for cmd in ("llmq run", "llmq chat", "llmq status", "llmq ping", "llmq batch submit",
                "llmq batch status", "llmq batch results", "llmq batch wait",
                "llmq batch cancel", "llmq batch list"):
        check(cmd in readme, "client/README.md lacks %r" % cmd)
    for name in ("llmq", "llmq-broker", "llmq-worker", "llmq-sim"):
        for flag, want in (("-h", "usage"), ("--help", "usage"), ("--version", "0.")):
            p = subprocess.run([cl.bin_path(name), flag], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=10)
            out = p.stdout.decode()
            check(p.returncode == 0 and want in out.lower(), "%s %s: rc %d %r" % (name, flag,
                                                                           p.returncode, out[:200]))
            check("dangling" not in p.stderr.decode(), "%s %s: dangling" % (name, flag))
    for cmd in ("run", "chat", "status", "ping", "batch"):
        rc, out, _ = run_llmq([cmd, "-h"])
        check(rc == 0 and "usage: llmq " + cmd in out, "llmq %s -h: %d %r" % (cmd, rc, out[:200]))


def t_units(tmp):
    inp = os.path.join(tmp, "u.jsonl")
    write(inp, ["hello %d" % i for i in range(5)])
    rc, out, err = run_llmq(["run", inp, "-o", os.path.join(tmp, "u.out"), "--timeout", "2s",
                             "--give-up", "30s", "--deadline-ms", "20s", "--max-dispatches", "3",
                             *EMB], env=ENV)
    check(rc == 0, "duration flags: rc %d %s" % (rc, err))
    rc, out, err = run_llmq(["run", inp, "-o", os.path.join(tmp, "u2.out"), "--max-attempts",
                             "3", *EMB], env=ENV)
    check(rc == 0 and "deprecated" in err and "--max-dispatches" in err,
          "--max-attempts: rc %d %s" % (rc, err))
    for bad in (["--timeout", "2 weeks"], ["--give-up", "-1"], ["--deadline-ms", "x"]):
        rc, out, err = run_llmq(["run", inp, "-o", os.path.join(tmp, "u3.out"), *bad], env=ENV)
        check(rc == 2 and "duration" in err, "%r: rc %d %s" % (bad, rc, err))
    # (The warning comes at parse time: a missing input ends the run there.)
    rc, out, err = run_llmq(["run", os.path.join(tmp, "missing.jsonl"), "-o",
                             os.path.join(tmp, "u4.out"), "--give-up", "300"], env=ENV)
    check(rc == 2 and "300 ms" in err, "--give-up 300 warns it is ms: %s" % err)


def t_files(tmp):
    inp = os.path.join(tmp, "same.jsonl")
    write(inp, ["hello %d" % i for i in range(5)])
    with open(inp, "rb") as f:
        before = f.read()
    os.symlink(inp, os.path.join(tmp, "link.jsonl"))
    os.link(inp, os.path.join(tmp, "hard.jsonl"))
    for out in (inp, os.path.join(tmp, "link.jsonl"), os.path.join(tmp, "hard.jsonl"),
                os.path.join(tmp, ".", "same.jsonl")):
        for mode in ([], ["--mode", "realtime"]):
            rc, _, err = run_llmq(["run", inp, "-o", out, *mode, *EMB], env=ENV)
            check(rc == 2 and "same file" in err, "-o %s: rc %d %s" % (out, rc, err))
    with open(inp, "rb") as f:
        check(f.read() == before, "the input was modified")
    dup = os.path.join(tmp, "dup.jsonl")
    write(dup, ['{"custom_id": "x", "prompt": "a"}', '{"custom_id": "y", "prompt": "b"}',
                '{"custom_id": "x", "prompt": "c"}'])
    for cmd in (["run", dup, "-o", os.path.join(tmp, "dup.out")],
                ["batch", "submit", dup, "-o", os.path.join(tmp, "dup2.out")]):
        rc, _, err = run_llmq([*cmd, *EMB], env=ENV)
        check(rc == 2 and "duplicate custom_id 'x'" in err and "line 3" in err,
              "%r: rc %d %s" % (cmd, rc, err))
        check("started a local cluster" not in err, "nothing is started before the check")
    check(not os.path.exists(os.path.join(tmp, "dup.out")), "nothing written")


def t_large_line(tmp):
    # 65 MiB of text in one line: over the 64 MiB frame limit.
    inp = os.path.join(tmp, "big.jsonl")
    with open(inp, "w") as f:
        f.write('{"custom_id": "small-1", "prompt": "hi"}\n')
        f.write('{"custom_id": "huge", "prompt": "' + "a" * (65 * 1024 * 1024) + '"}\n')
        f.write('{"custom_id": "small-2", "prompt": "ho"}\n')
    out = os.path.join(tmp, "big.out")
    rc, _, err = run_llmq(["run", inp, "-o", out, "--give-up", "20s", *EMB], env=ENV,
                          timeout=90)
    check(rc == 1, "one line too large: exit 1, got %d %s" % (rc, err[-1000:]))
    rows = {r["custom_id"]: r for r in cl.read_jsonl(out)}
    check(set(rows) == {"small-1", "huge", "small-2"}, "rows: %r" % list(rows))
    check(rows["huge"]["error"] and "too large" in rows["huge"]["error"]["message"],
          "huge: %r" % rows["huge"]["error"])
    check(out_line_ok(rows["small-1"]) and out_line_ok(rows["small-2"]), "others ok")


def t_no_broker(tmp):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    inp = os.path.join(tmp, "nb.jsonl")
    write(inp, ["hello"])
    ep = "tcp://127.0.0.1:%d" % port
    for cmd in (["run", inp, "-o", os.path.join(tmp, "nb.out")], ["chat", "hi"], ["status"],
                ["batch", "list"], ["batch", "submit", inp, "-o", os.path.join(tmp, "nb2.out")]):
        rc, _, err = run_llmq([*cmd, "--broker", ep, "--timeout", "300ms"], timeout=30)
        check(rc == 3 and ep in err, "%r: rc %d %s" % (cmd, rc, err))


def main():
    cl.llmqtest.skip_if_default_broker("embedded checks would use it")
    tmp = cl.temp_dir("llmq-papercuts-")
    t_help()
    t_files(tmp)
    t_no_broker(tmp)
    t_stdio(tmp)
    t_units(tmp)
    t_quickstart(tmp)
    t_large_line(tmp)
    print("ok papercuts")


if __name__ == "__main__":
    main()
