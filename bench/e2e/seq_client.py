"""Baseline (a) of the end-to-end benchmark: one request at a time.

    seq_client.py IN.jsonl OUT.jsonl BASE_URL [LINES]

Reads OpenAI Batch API input lines (custom_id, body), POSTs each body to
BASE_URL/chat/completions over one keep-alive connection (http.client), waits
for the answer, writes an OpenAI Batch output line, then sends the next. This
is the loop most evaluation scripts start as. Only the first LINES lines are
sent (the benchmark extrapolates to the whole file). Standard library only.
"""
import http.client
import json
import sys
import urllib.parse


def main():
    src, dst, base = sys.argv[1], sys.argv[2], sys.argv[3]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    url = urllib.parse.urlsplit(base.rstrip("/") + "/chat/completions")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}
    ok = failed = 0
    with open(src) as fin, open(dst, "w") as fout:
        for n, line in enumerate(fin):
            if limit is not None and n >= limit:
                break
            item = json.loads(line)
            conn.request("POST", url.path, body=json.dumps(item["body"]), headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {"id": "seq-%d" % n, "custom_id": item["custom_id"], "error": None,
                   "response": {"status_code": resp.status, "body": json.loads(data)}}
            if resp.status == 200:
                ok += 1
            else:
                failed += 1
            fout.write(json.dumps(out) + "\n")
    print("ok %d failed %d" % (ok, failed), file=sys.stderr)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
