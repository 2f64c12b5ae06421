"""Bindings benchmark client: N chat requests through the Python package.

    py_client.py async|sync ENDPOINT N CONCURRENCY

async: AsyncClient.infer_many; sync: Client.infer_many. Exit 1 unless
every request succeeded."""
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "bindings", "python"))
import llmq_client as L  # noqa: E402


def bodies(n):
    return [{"messages": [{"role": "user", "content": "Question %d: what is %d times %d?"
                           % (i, i, i + 1)}], "max_tokens": 16} for i in range(n)]


def main():
    mode, endpoint, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "async":
        async def run():
            async with L.AsyncClient(endpoint, timeout=300) as c:
                return await c.infer_many("chat", "sim-model", bodies(n), concurrency=conc,
                                          return_exceptions=True)
        results = asyncio.run(run())
    else:
        with L.Client(endpoint, timeout=300) as c:
            results = c.infer_many("chat", "sim-model", bodies(n), concurrency=conc,
                                   return_exceptions=True)
    ok = sum(1 for r in results if isinstance(r, L.Result) and r.text)
    print("ok %d failed %d" % (ok, n - ok), file=sys.stderr)
    return 0 if ok == n else 1


if __name__ == "__main__":
    sys.exit(main())
