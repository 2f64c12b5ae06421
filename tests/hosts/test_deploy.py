"""hosts.deploy: the deploy files, validated offline (no Docker engine).

- `docker-compose config` passes (docker-compose v1; exit 77 if missing);
- the real-provider path reaches OPENAI_BASE_URL: render the compose file
  with LLMQ_PROVIDER=openai and OPENAI_BASE_URL pointing at a local
  llmq-sim that accepts only the test's key, build the worker's command
  line from the rendered environment (deploy/worker-entry.sh), and run it
  with --check-only: the sim must see the request;
- without keys the ZeroMQ ports are published on 127.0.0.1; after
  deploy/keys.sh (run in a copy of the files) they are public, CURVE is
  on for the broker and the workers, and the keys are where compose
  mounts them;
- the batch database has a volume, every service but Prometheus a
  healthcheck, the Dockerfile no `|| true`; promtool accepts
  deploy/prometheus.yml where promtool exists."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "client"))
import clusterlib as cl  # noqa: E402

SRC = cl.SOURCE_DIR


def skip(reason):
    print("hosts.deploy: SKIP: " + reason, file=sys.stderr)
    sys.exit(77)


def render(tmp, env_lines, extra_env=None):
    """docker-compose config with only env_lines as .env and extra_env."""
    import yaml
    env_file = os.path.join(tmp, "test.env")
    with open(env_file, "w") as f:
        f.write("\n".join(env_lines) + "\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLMQ_", "OPENAI_", "ANTHROPIC_"))}
    env.update(extra_env or {})
    r = subprocess.run(["docker-compose", "--env-file", env_file, "-f",
                        os.path.join(SRC, "docker-compose.yml"), "config"],
                       capture_output=True, text=True, env=env, timeout=60)
    cl.check(r.returncode == 0, "docker-compose config: " + r.stderr)
    return yaml.safe_load(r.stdout)


def render_keyed(tmp):
    """deploy/keys.sh in a copy of the deploy files, then docker-compose
    config there (compose reads the .env keys.sh wrote)."""
    import yaml
    root = os.path.join(tmp, "tree")
    os.makedirs(os.path.join(root, "deploy"))
    os.makedirs(os.path.join(root, "build"))
    shutil.copy(os.path.join(SRC, "docker-compose.yml"), root)
    shutil.copy(os.path.join(SRC, "deploy", "keys.sh"), os.path.join(root, "deploy"))
    shutil.copy(os.path.join(SRC, "deploy", "Dockerfile"), os.path.join(root, "deploy"))
    os.symlink(cl.BIN_DIR, os.path.join(root, "build", "bin"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env["PATH"] = "/usr/bin:/bin"
    r = subprocess.run(["bash", os.path.join(root, "deploy", "keys.sh"), "alice", "bob"],
                       capture_output=True, text=True, env=env, timeout=30)
    cl.check(r.returncode == 0, "keys.sh: " + r.stderr)
    keys = os.path.join(root, "deploy", "keys")
    for f in ("broker", "worker", "alice", "bob", "clients/alice", "workers/worker"):
        cl.check(os.path.exists(os.path.join(keys, f)), "keys.sh wrote " + f)
    cl.check(not os.path.exists(os.path.join(keys, "clients", "alice_secret")),
             "no secret in an allow-list")
    cl.check(os.stat(os.path.join(keys, "broker_secret")).st_mode & 0o077 == 0, "0600")
    r = subprocess.run(["docker-compose", "config"], cwd=root, capture_output=True,
                       text=True, env=env, timeout=60)
    cl.check(r.returncode == 0, "docker-compose config with keys: " + r.stderr)
    return yaml.safe_load(r.stdout)


def worker_argv(service):
    """The worker's command line, as deploy/worker-entry.sh builds it from
    the rendered environment."""
    cl.check(service["command"] == ["llmq-worker-entry"], "worker runs the entry script")
    env = {"PATH": "/usr/bin:/bin", "LLMQ_PRINT_COMMAND": "1"}
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items()
                if v is not None})
    r = subprocess.run(["sh", os.path.join(SRC, "deploy", "worker-entry.sh")],
                       capture_output=True, text=True, env=env, timeout=10)
    cl.check(r.returncode == 0, "worker-entry.sh: " + r.stderr)
    return r.stdout.split("\n")[:-1], env


def check_real_provider(tmp):
    sim = cl.Sim("--api-key", "sk-deploy-test")
    try:
        url = sim.url + "/v1"
        conf = render(tmp, [], {"LLMQ_PROVIDER": "openai", "OPENAI_BASE_URL": url,
                                "OPENAI_API_KEY": "sk-deploy-test", "LLMQ_MODEL": "gpt-x"})
        argv, env = worker_argv(conf["services"]["worker"])
        cl.check("--base-url" in argv and argv[argv.index("--base-url") + 1] == url,
                 "worker --base-url is OPENAI_BASE_URL: %s" % argv)
        cl.check(not any("sim:8089" in a for a in argv), "never the simulator")
        del env["LLMQ_PRINT_COMMAND"]
        env["PATH"] = cl.BIN_DIR + ":" + env["PATH"]
        before = sim.stats()["requests"].get("/v1/models", {}).get("200", 0)
        r = subprocess.run(argv + ["--check-only"], capture_output=True, text=True,
                           env=env, timeout=30)
        cl.check(r.returncode == 0, "check-only against OPENAI_BASE_URL: %s" % r.stderr)
        after = sim.stats()["requests"].get("/v1/models", {}).get("200", 0)
        cl.check(after > before, "the provider at OPENAI_BASE_URL answered the "
                 "worker with the test's key (%d -> %d)" % (before, after))
        print("real provider: %s -> %s" % (" ".join(argv[:3]), r.stdout.strip()))
    finally:
        sim.kill()


def published(service):
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", "0.0.0.0"), int(p["target"])))
        else:
            parts = str(p).split(":")
            out.append((parts[0] if len(parts) == 3 else "0.0.0.0",
                        int(parts[-1].split("/")[0])))
    return out


def check_binding(tmp):
    conf = render(tmp, [])
    broker = conf["services"]["broker"]
    zmq_ports = [(h, t) for h, t in published(broker) if t in (5555, 5556)]
    cl.check(len(zmq_ports) == 2 and all(h == "127.0.0.1" for h, _ in zmq_ports),
             "no keys: ZeroMQ ports on 127.0.0.1 only: %s" % zmq_ports)
    cl.check(not broker["environment"].get("LLMQ_CURVE_CERT"), "no keys: CURVE off")
    for name, svc in conf["services"].items():
        cl.check(name == "prometheus" or "healthcheck" in svc, name + " has a healthcheck")
    cl.check(any("/data" in str(v) for v in broker.get("volumes", [])), "batch db volume")
    cl.check("--batch-db" in broker["command"], "batch db on the volume")
    keyed = render_keyed(tmp)
    kb = keyed["services"]["broker"]
    cl.check(all(h == "0.0.0.0" for h, t in published(kb) if t in (5555, 5556)),
             "keys: ZeroMQ ports published")
    cl.check(kb["environment"]["LLMQ_CURVE_CERT"] == "/keys/broker_secret", "keys: broker cert")
    argv, _ = worker_argv(keyed["services"]["worker"])
    cl.check("--curve-cert" in argv and "--broker-key" in argv, "keys: worker uses CURVE")


def check_files():
    with open(os.path.join(SRC, "deploy", "Dockerfile")) as f:
        cl.check("|| true" not in f.read(), "Dockerfile: no `|| true`")
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "config",
                            os.path.join(SRC, "deploy", "prometheus.yml")],
                           capture_output=True, text=True, timeout=30)
        cl.check(r.returncode == 0, "promtool: " + r.stdout + r.stderr)
    else:
        print("promtool missing: prometheus.yml not checked", file=sys.stderr)


def main():
    if not shutil.which("docker-compose"):
        skip("no docker-compose (apt-get install docker-compose)")
    try:
        import yaml  # noqa: F401
    except ImportError:
        skip("no python3-yaml")
    tmp = cl.temp_dir("llmq-deploy-")
    check_files()
    check_binding(tmp)
    check_real_provider(tmp)
    print("hosts.deploy: OK")


if __name__ == "__main__":
    main()
