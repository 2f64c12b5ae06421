"""The official openai and @anthropic-ai/sdk npm packages, unchanged, pointed
at llmq-gateway in front of a real cluster (llmq-sim, broker, worker):
sdk_openai.js and sdk_anthropic.js say what they cover."""
import os
import subprocess

from gwlib import HERE, KEY, MODEL, GwCluster, check, need_sdks


def run_sdk(script, gw):
    env = dict(os.environ, GW_URL=gw.url, GW_KEY=KEY, GW_MODEL=MODEL)
    p = subprocess.run(["node", os.path.join(HERE, script)], env=env, cwd=HERE,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    out = p.stdout.decode(errors="replace")
    print(out)
    check(p.returncode == 0, "%s failed" % script)


def main():
    need_sdks()
    cluster = GwCluster(workers=2)
    try:
        run_sdk("sdk_openai.js", cluster.gateway)
        run_sdk("sdk_anthropic.js", cluster.gateway)
    finally:
        cluster.close()
    print("gateway sdk: ok")


if __name__ == "__main__":
    main()
