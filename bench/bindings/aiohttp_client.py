"""Bindings benchmark baseline: the same N chat requests written by hand
with asyncio + aiohttp (Debian's python3-aiohttp) straight at llmq-sim.

    aiohttp_client.py BASE_URL N CONCURRENCY

One ClientSession whose pool allows CONCURRENCY connections, a semaphore
holding CONCURRENCY requests in flight, results kept in input order.
Exit 1 unless every request succeeded."""
import asyncio
import sys

import aiohttp


async def main():
    base, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    url = base.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}
    sem = asyncio.Semaphore(conc)
    out = [None] * n

    async def one(session, i):
        body = {"model": "sim-model", "max_tokens": 16, "messages": [
            {"role": "user", "content": "Question %d: what is %d times %d?" % (i, i, i + 1)}]}
        async with sem:
            try:
                async with session.post(url, json=body, headers=headers) as resp:
                    data = await resp.json()
                    if resp.status == 200:
                        out[i] = data["choices"][0]["message"]["content"]
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass

    connector = aiohttp.TCPConnector(limit=conc)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(session, i) for i in range(n)))
    ok = sum(1 for x in out if x)
    print("ok %d failed %d" % (ok, n - ok), file=sys.stderr)
    return 0 if ok == n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
