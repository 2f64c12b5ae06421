"""A batch through llmq-gateway survives a gateway restart and a broker
restart (both kill -9) in the middle of its run: it completes and its output
file is whole (every custom_id exactly once, each with a response body).
The broker's batch DB holds the batch; the gateway's data dir holds the
input file and the batch record."""
import json
import uuid

from gwlib import MODEL, GwCluster, check, wait_until

N = 300


def upload(gw, lines):
    boundary = uuid.uuid4().hex
    data = "\n".join(json.dumps(l) for l in lines) + "\n"
    body = ("--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n%s\r\n--%s--\r\n") % (
        boundary, boundary, data, boundary)
    st, _, f = gw.json("POST", "/v1/files", body.encode(),
                       {"Content-Type": "multipart/form-data; boundary=" + boundary})
    check(st == 200 and f["id"].startswith("file-"), "upload: %r" % (f,))
    return f["id"]


def batch(gw, bid):
    st, _, b = gw.json("GET", "/v1/batches/" + bid)
    return b if st == 200 else None


def main():
    c = GwCluster(workers=1, capacity=4)
    try:
        lines = [{"custom_id": "row-%04d" % i, "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": MODEL, "max_tokens": 4,
                           "messages": [{"role": "user", "content": "item %d [[sim:delay_ms=100]]" % i}]}}
                 for i in range(N)]
        fid = upload(c.gateway, lines)
        st, _, b = c.gateway.json("POST", "/v1/batches", {"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                                         "completion_window": "24h"})
        check(st == 200 and b["request_counts"]["total"] == N, "batch created: %r" % (b,))
        bid = b["id"]
        wait_until("first results", lambda: (batch(c.gateway, bid) or {}).get(
            "request_counts", {}).get("completed", 0) > 0, 30)
        c.restart_gateway()
        b = batch(c.gateway, bid)
        check(b and b["status"] in ("in_progress", "finalizing", "completed"), "known after gateway restart: %r" % b)
        print("ok gateway restarted at %d/%d" % (b["request_counts"]["completed"], N))
        c.restart_broker()
        b = wait_until("the batch answered by the new broker", lambda: batch(c.gateway, bid), 30)
        check(b["request_counts"]["completed"] < N, "broker restarted mid-batch")
        print("ok broker restarted at %d/%d" % (b["request_counts"]["completed"], N))
        done = wait_until("batch completed", lambda: (lambda x: x if x and x["status"] == "completed" else None)(
            batch(c.gateway, bid)), 120)
        check(done["request_counts"] == {"total": N, "completed": N, "failed": 0}, "counts %r" % done["request_counts"])
        st, _, data = c.gateway.request("GET", "/v1/files/%s/content" % done["output_file_id"])
        out = [json.loads(l) for l in data.decode().strip().split("\n")]
        ids = [l["custom_id"] for l in out]
        check(len(ids) == N and set(ids) == set(l["custom_id"] for l in lines), "output file whole")
        check(all(l["response"]["status_code"] == 200 and l["response"]["body"]["choices"] for l in out),
              "every line has a response body")
        check(done["error_file_id"] is None, "no error file")
    finally:
        c.close()
    print("gateway restart: ok")


if __name__ == "__main__":
    main()
