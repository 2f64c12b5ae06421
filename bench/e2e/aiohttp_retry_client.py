"""Baseline of the faults benchmark: a hand-written asyncio client that
retries the way the official OpenAI Python SDK does.

    aiohttp_retry_client.py IN.jsonl OUT.jsonl BASE_URL CONCURRENCY [ATTEMPTS]

Debian's python3-aiohttp, one ClientSession with CONCURRENCY connections, a
semaphore holding CONCURRENCY requests in flight. A 408/409/429/5xx answer,
a body that is not JSON, or a connection error is retried up to ATTEMPTS
(default 5) attempts in all, after the SDK's backoff: 0.5 s * 2^(n-1),
capped at 8 s, times a jitter of 0.75..1, or the server's retry-after
(retry-after-ms) when it says so (up to 60 s).
"""
import asyncio
import json
import random
import sys

import aiohttp

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def backoff(attempt, headers):
    for key, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(key) if headers else None
        if value:
            try:
                seconds = float(value) * scale
                if 0 < seconds <= 60:
                    return seconds
            except ValueError:
                pass
    delay = min(0.5 * 2 ** (attempt - 1), 8.0)
    return delay * (1 - 0.25 * random.random())


async def main():
    src, dst, base, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    attempts = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    url = base.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key"}
    with open(src) as f:
        items = [json.loads(line) for line in f if line.strip()]
    sem = asyncio.Semaphore(conc)
    counts = {"ok": 0, "failed": 0, "retries": 0}
    fout = open(dst, "w")
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=conc)

    async def attempt_once(session, item):
        async with session.post(url, json=item["body"], headers=headers) as resp:
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:
                return None, None, "malformed JSON", resp.headers
            return resp.status, body, None, resp.headers

    async def one(session, n, item):
        async with sem:
            for attempt in range(1, attempts + 1):
                try:
                    status, body, error, rh = await attempt_once(session, item)
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    status, body, error, rh = None, None, str(e), None
                if status == 200 or (status is not None and status not in RETRY_STATUS) \
                        or attempt == attempts:
                    break
                counts["retries"] += 1
                await asyncio.sleep(backoff(attempt, rh))
        counts["ok" if status == 200 else "failed"] += 1
        fout.write(json.dumps({"id": "aio-%d" % n, "custom_id": item["custom_id"],
                               "response": {"status_code": status, "body": body},
                               "error": error and {"message": error}}) + "\n")

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(session, n, it) for n, it in enumerate(items)))
    fout.close()
    print("ok %d failed %d retries %d" % (counts["ok"], counts["failed"], counts["retries"]),
          file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
