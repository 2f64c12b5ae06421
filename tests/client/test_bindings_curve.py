#!/usr/bin/python3
"""client.bindings_curve: the Python and Node packages with CURVE keys
(proto/PROTOCOL.md 1.1) against the real llmq-broker (--curve-cert,
--client-keys, --worker-keys), a keyed llmq-worker and llmq-sim. With
their keys (as arguments, a Z85 broker key, and through LLMQ_CURVE_CERT /
LLMQ_BROKER_KEY) calls work; an unknown client key, a wrong broker key and
a client without CURVE get nothing and fail with AuthError / Unavailable
within their bound. Skips (77) when the broker has no --curve-cert."""
import asyncio
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bindings_cluster import temp_dir  # noqa
from clusterlib import SOURCE_DIR, Proc, Sim, bin_path, check, wait_until  # noqa

sys.path.insert(0, os.path.join(SOURCE_DIR, "bindings", "python"))
import llmq_client as L  # noqa: E402

MODEL = "gpt-4o-mini"


def keygen(d, name):
    path = os.path.join(d, name)
    r = subprocess.run([bin_path("llmq"), "keygen", path], capture_output=True, text=True,
                       timeout=20)
    check(r.returncode == 0, "llmq keygen: %s" % r.stderr)
    return path


def refused(make):
    """The error a call with this client fails with (it must fail)."""
    c = make()
    try:
        c.chat(MODEL, "let me in")
    except (L.AuthError, L.Unavailable) as e:
        return e
    finally:
        c.close()
    check(False, "a refused client got an answer")


def node(script, env):
    index = os.path.join(SOURCE_DIR, "bindings", "node", "index.mjs")
    code = "import * as L from %s;\n%s" % (json.dumps(index), script)
    p = subprocess.run(["node", "--input-type=module", "-e", code], capture_output=True,
                       text=True, timeout=60, env=env)
    check(p.returncode == 0, "node: %s\n%s" % (p.stdout, p.stderr))
    return p.stdout.strip()


def main():
    r = subprocess.run([bin_path("llmq-broker"), "--help"], capture_output=True, text=True)
    if "--curve-cert" not in r.stdout + r.stderr:
        print("llmq-broker has no --curve-cert (CURVE not built in): skipped", file=sys.stderr)
        sys.exit(77)
    tmp = temp_dir("llmq-bindings-curve-")
    procs = []
    try:
        broker_cert = keygen(tmp, "broker")
        worker_cert = keygen(tmp, "worker")
        client_cert = keygen(tmp, "client")
        stranger = keygen(tmp, "stranger")
        clients, workers = os.path.join(tmp, "clients"), os.path.join(tmp, "workers")
        os.mkdir(clients)
        os.mkdir(workers)
        shutil.copy(client_cert, clients)
        shutil.copy(worker_cert, workers)
        sim = Sim("--latency-ms", "5")
        procs.append(sim)
        broker = Proc([bin_path("llmq-broker"), "--frontend", "tcp://127.0.0.1:*",
                       "--backend", "tcp://127.0.0.1:*", "--batch-db", "none",
                       "--curve-cert", broker_cert + "_secret", "--client-keys", clients,
                       "--worker-keys", workers])
        procs.append(broker)
        fe = broker.ready["frontend"]
        procs.append(Proc([bin_path("llmq-worker"), "--broker", broker.ready["backend"],
                           "--provider", "sim", "--base-url", sim.url + "/v1",
                           "--capacity", "8", "--curve-cert", worker_cert + "_secret",
                           "--broker-key", broker_cert], env={"OPENAI_API_KEY": "sk-test"}))

        keyed = L.Client(fe, curve_cert=client_cert + "_secret", broker_key=broker_cert,
                         timeout=20)

        def worker_joined():
            try:
                return len(keyed.status(timeout=2).get("workers", [])) >= 1
            except L.LlmqError:
                return False
        wait_until("the keyed worker at the broker", worker_joined, 30)
        r = keyed.chat(MODEL, "hello over curve", max_tokens=4)
        check((r.text or "").startswith("sim-"), "keyed chat: %r" % r)
        keyed.close()
        broker_z85 = L.read_cert(broker_cert)[0]
        # the public cert path works too (NAME: NAME_secret is found next to it)
        with L.Client(fe, curve_cert=client_cert, broker_key=broker_z85) as c:
            check((c.chat(MODEL, "z85 broker key").text or "").startswith("sim-"), "z85 key")
        env_keys = dict(os.environ, LLMQ_CURVE_CERT=client_cert + "_secret",
                        LLMQ_BROKER_KEY=broker_cert)

        async def through_env():
            os.environ.update(LLMQ_CURVE_CERT=env_keys["LLMQ_CURVE_CERT"],
                              LLMQ_BROKER_KEY=env_keys["LLMQ_BROKER_KEY"])
            try:
                async with L.AsyncClient(fe) as a:
                    return (await a.chat(MODEL, "async via env")).text
            finally:
                del os.environ["LLMQ_CURVE_CERT"], os.environ["LLMQ_BROKER_KEY"]
        check((asyncio.run(through_env()) or "").startswith("sim-"), "async client via env")

        e = refused(lambda: L.Client(fe, curve_cert=stranger + "_secret",
                                     broker_key=broker_cert, broker_timeout=3))
        print("python, unknown client key: %s: %s" % (type(e).__name__, e))
        check(isinstance(e, L.AuthError), "unknown client key: AuthError (handshake refused)")
        e = refused(lambda: L.Client(fe, curve_cert=client_cert + "_secret",
                                     broker_key=stranger, broker_timeout=3))
        print("python, wrong broker key: %s: %s" % (type(e).__name__, e))
        e = refused(lambda: L.Client(fe, broker_timeout=3))
        print("python, no CURVE: %s: %s" % (type(e).__name__, e))
        check(isinstance(e, L.Unavailable), "no CURVE: Unavailable")

        if not shutil.which("node") or not os.path.isdir(
                os.path.join(SOURCE_DIR, "bindings", "node", "node_modules", "zeromq")):
            print("node or bindings/node/node_modules missing: Node part skipped")
        else:
            out = node("""
const c = new L.Client(%s);
const r = await c.chat("%s", "node over curve", { max_tokens: 4 });
console.log(r.text.slice(0, 4));
""" % (json.dumps(fe), MODEL), env_keys)
            check(out == "sim-", "node keyed chat: %r" % out)
            out = node("""
for (const [name, opts] of [
  ["unknown client key", { curveCert: %s, brokerKey: %s }],
  ["no CURVE", {}],
]) {
  const c = new L.Client(%s, { ...opts, brokerTimeout: 3000 });
  try {
    await c.chat("m", "let me in");
    console.log("ANSWERED");
  } catch (e) {
    console.log(name + ": " + e.name + ": " + e.message);
    if (!(e instanceof L.AuthError || e instanceof L.Unavailable)) throw e;
  }
  c.close();
}
""" % (json.dumps(stranger + "_secret"), json.dumps(broker_cert), json.dumps(fe)),
                dict(os.environ))
            print("node: " + out.replace("\n", "; node: "))
            check("ANSWERED" not in out, "a refused Node client got an answer")
            check("unknown client key: AuthError" in out, "node, unknown key: AuthError")
        print("client.bindings_curve: ok")
    finally:
        for p in reversed(procs):
            p.kill()


if __name__ == "__main__":
    main()
