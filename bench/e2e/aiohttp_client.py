"""Baseline (b) of the end-to-end benchmark: a hand-written asyncio client.

    aiohttp_client.py IN.jsonl OUT.jsonl BASE_URL CONCURRENCY

What a careful Python user writes instead of a broker: Debian's
python3-aiohttp, one ClientSession whose connection pool allows CONCURRENCY
connections, a semaphore holding CONCURRENCY requests in flight, every
OpenAI Batch API input line POSTed to BASE_URL/chat/completions and written
out as an OpenAI Batch output line as it completes. No retries (llmq-sim
injects no faults in this benchmark).
"""
import asyncio
import json
import sys

import aiohttp


async def main():
    src, dst, base, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    url = base.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}
    with open(src) as f:
        items = [json.loads(line) for line in f if line.strip()]
    sem = asyncio.Semaphore(conc)
    counts = {"ok": 0, "failed": 0}
    fout = open(dst, "w")
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=conc)

    async def one(session, n, item):
        async with sem:
            try:
                async with session.post(url, json=item["body"], headers=headers) as resp:
                    body = await resp.json()
                    status = resp.status
                    error = None
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                body, status, error = None, None, {"message": str(e)}
        counts["ok" if status == 200 else "failed"] += 1
        fout.write(json.dumps({"id": "aio-%d" % n, "custom_id": item["custom_id"],
                               "response": {"status_code": status, "body": body},
                               "error": error}) + "\n")

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(session, n, it) for n, it in enumerate(items)))
    fout.close()
    print("ok %d failed %d" % (counts["ok"], counts["failed"]), file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
