// client.node: the Node client (bindings/node/llmq.js) against the real C
// broker, workers and llmq-sim, driven by test_node.py, which started the
// cluster. argv: frontend model. When it prints "RESTART" the driver kills
// the broker with -9, starts a new one on the same ports and answers "OK".
"use strict";
const path = require("path");
const readline = require("readline");
const { Client } = require(path.join(process.env.LLMQ_SOURCE_DIR, "bindings", "node", "llmq.js"));

const [frontend, model, hashesJson] = process.argv.slice(2);
const hashes = JSON.parse(hashesJson); // text -> expected "sim-<hash>" prefix

function check(cond, message) {
  if (!cond) {
    console.error("FAIL: " + message);
    process.exit(1);
  }
}
const chat = (text) => ({ messages: [{ role: "user", content: text }], max_tokens: 16 });

async function main() {
  const c = new Client(frontend, { timeout: 1500, window: 8 });
  const pong = await c.ping();
  check(pong && pong.startsWith("llmq-broker"), "ping: " + pong);
  const status = await c.status();
  check(status && status.workers.length === 2, "status: " + JSON.stringify(status));

  let r = await c.infer("chat", model, chat("hello from node"));
  check(r.ok && r.text.startsWith(hashes["hello from node"]), "chat: " + JSON.stringify(r));
  check(r.usage.total_tokens > 0 && r.worker, "usage/worker: " + JSON.stringify(r));
  r = await c.infer("embedding", model, { input: "x" });
  check(r.ok && r.body.data.length === 1, "embedding: " + JSON.stringify(r));
  r = await c.infer("chat", model, chat("node fails [[sim:fail=400]]"));
  check(!r.ok && r.error.code === "invalid_request", "error: " + JSON.stringify(r));

  // async: 100 through a window of 8, results match their requests
  const texts = [];
  for (let i = 0; i < 100; i++) texts.push("node async " + i);
  const results = await Promise.all(texts.map((t) => c.submit("chat", model, chat(t))));
  results.forEach((res, i) => check(res.ok && res.text.startsWith(hashes[texts[i]]), "async " + i));
  check(c.outstanding === 0, "outstanding after all: " + c.outstanding);

  // streaming
  const deltas = [];
  r = await c.stream(model, chat("node stream [[sim:tokens=12]]"), (d) => deltas.push(d));
  check(r.ok, "stream result: " + JSON.stringify(r));
  check(deltas.length >= 2 && deltas.join("").startsWith(hashes["node stream [[sim:tokens=12]]"]),
        "stream deltas: " + JSON.stringify(deltas.slice(0, 4)));

  // broker kill -9 and restart with requests outstanding
  c.window = 64;
  const restartTexts = [];
  for (let i = 0; i < 30; i++) restartTexts.push("node restart " + i + " [[sim:delay_ms=300]]");
  const pending = restartTexts.map((t) => c.submit("chat", model, chat(t)));
  const rl = readline.createInterface({ input: process.stdin });
  const answered = new Promise((resolve) => rl.once("line", resolve));
  console.log("RESTART");
  await answered;
  rl.close();
  // `overloaded` is retryable by definition (and seen right after a restart,
  // while workers say hello again): send those again.
  let overloaded = 0;
  const after = await Promise.all(pending.map(async (p, i) => {
    let res = await p;
    while (!res.ok && res.error.code === "overloaded" && overloaded < 60) {
      overloaded++;
      res = await c.submit("chat", model, chat(restartTexts[i]));
    }
    return res;
  }));
  after.forEach((res, i) =>
    check(res.ok && res.text.startsWith(hashes[restartTexts[i]]), "after restart " + i + ": " + JSON.stringify(res)));
  check(c.reconnects >= 1, "no reconnect after the broker restart");
  c.close();
  console.log(`client.node: ok (reconnects ${c.reconnects}, resent ${c.resent}, overloaded retried ${overloaded})`);
}

main().catch((e) => {
  console.error("FAIL: " + (e && e.stack ? e.stack : e));
  process.exit(1);
});
