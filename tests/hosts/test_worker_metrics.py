"""hosts.worker_metrics: llmq-worker --metrics, scraped like Prometheus.

A real broker, llmq-sim with 429s and a model list, and one worker with an
rpm limit: the scrape counts the requests (ok and failed), errors by
code, retries and 429s, limiter waits, tokens and cost, and shows the
breaker closed. The text is checked by `promtool check metrics` where
promtool exists (that part alone is skipped otherwise), and parsed here
always."""
import json
import os
import shutil
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "client"))
import clusterlib as cl  # noqa: E402


def scrape(url):
    return urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()


def parse(text):
    """{'name{labels}': value} for every sample line."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    return samples


def total(samples, prefix):
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def main():
    procs = []
    try:
        run(cl.temp_dir("llmq-wmetrics-"), procs)
    finally:
        for p in procs:
            p.kill()
    print("hosts.worker_metrics: OK")


def run(tmp, procs):
    sim = cl.Sim("--p429", "0.3", "--seed", "7", "--models", "sim-model")
    procs.append(sim)
    broker = cl.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--batch-db", "none")
    procs.append(broker)
    worker = cl.Proc([cl.bin_path("llmq-worker"), "--broker", broker.backend,
                      "--provider", "sim", "--base-url", sim.url + "/v1",
                      "--model", "sim-model", "--model", "gone-model", "--rpm", "600",
                      "--retry-base-ms", "10", "--retry-cap-ms", "100",
                      "--max-attempts", "8", "--metrics", "127.0.0.1:0"])
    procs.append(worker)
    url = worker.ready.get("metrics")
    cl.check(url and url.startswith("http://127.0.0.1:"), "ready line names the metrics URL")
    src, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    with open(src, "w") as f:
        for i in range(30):
            model = "gone-model" if i % 6 == 5 else "sim-model"
            f.write(json.dumps({"custom_id": "r%d" % i, "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": {"model": model, "messages": [
                                    {"role": "user", "content": "hi %d" % i}]}}) + "\n")
    r = subprocess.run([cl.bin_path("llmq"), "run", src, "-o", out, "--broker",
                        broker.frontend, "--quiet"], capture_output=True, text=True, timeout=90)
    cl.check(r.returncode in (0, 1), "llmq run: %d %s" % (r.returncode, r.stderr))
    text = scrape(url)
    s = parse(text)
    if os.environ.get("LLMQ_TEST_VERBOSE"):
        print(text)
    ok = s.get('llmq_worker_requests_total{model="sim-model",outcome="ok"}', 0)
    # The sim answers 404 for a model it does not list: an error code
    # (which one is the worker's classification, not this test's).
    gone = total(s, 'llmq_worker_requests_total{model="gone-model",outcome=')
    cl.check(ok == 25 and gone == 5, "requests: %d ok, %d failed" % (ok, gone))
    cl.check(total(s, "llmq_worker_errors_total{code=") == 5, "errors by code")
    cl.check(s["llmq_worker_http_429_total"] >= 1 and s["llmq_worker_retries_total"] >= 1,
             "429s and retries counted")
    cl.check(s["llmq_worker_limiter_waits_total"] >= 1, "limiter waits counted (rpm 600)")
    cl.check(total(s, 'llmq_worker_tokens_total{model="sim-model"') > 0, "tokens")
    cl.check(any(k.startswith("llmq_worker_cost_usd_total") for k in s), "cost")
    cl.check(s['llmq_worker_breaker_state{state="closed"}'] == 1, "breaker closed")
    cl.check(s["llmq_worker_in_flight"] == 0, "nothing held at the end")
    print("scraped: %d ok, %d failed, %d 429s, %d retries, %d limiter waits" %
          (ok, gone, s["llmq_worker_http_429_total"], s["llmq_worker_retries_total"],
           s["llmq_worker_limiter_waits_total"]))
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=text,
                           capture_output=True, text=True, timeout=30)
        cl.check(p.returncode == 0, "promtool check metrics: " + p.stdout + p.stderr)
    else:
        print("promtool missing: text-format check skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
