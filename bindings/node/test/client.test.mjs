// Live tests of the Node client against a real broker, workers and llmq-sim:
// calls, ordering, streams, batches, every error class, a broker kill -9 +
// restart with calls outstanding, and a script that never calls close().
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import * as L from "llmq-client";
import { ENDPOINT, LIVE, MODEL, body, deadEndpoint, restartBroker, simHash, waitSim } from "./util.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

test("CommonJS require gives the same classes", () => {
  const require = createRequire(import.meta.url);
  const cjs = require("llmq-client");
  assert.equal(cjs.Client, L.Client);
  assert.equal(cjs.RateLimited, L.RateLimited);
});

test("no broker: calls reject with Unavailable within the bound", async () => {
  const c = new L.Client(await deadEndpoint(), { brokerTimeout: 1000 });
  const t0 = Date.now();
  await assert.rejects(c.chat(MODEL, "anyone?"), L.Unavailable);
  await assert.rejects(c.ping(), L.Unavailable);
  assert.ok(Date.now() - t0 >= 1000);
  assert.equal(new L.Client(await deadEndpoint()).brokerTimeout, 30000);
});

test("calls", LIVE, async () => {
  const c = new L.Client(ENDPOINT, { timeout: 30000 });
  const p = await c.ping();
  assert.equal(p.broker, "llmq-broker");
  assert.ok((await c.status()).workers.length >= 1);
  let r = await c.chat(MODEL, "node hello", { max_tokens: 8, meta: { row: 7 } });
  assert.ok(r.text.startsWith(simHash("node hello")));
  assert.deepEqual(r.meta, { row: 7 });
  assert.ok(r.usage.totalTokens > 0 && r.worker);
  r = await c.chat(MODEL, [{ role: "system", content: "s" }, { role: "user", content: "two" }]);
  assert.ok(r.text.startsWith("sim-"));
  assert.ok((await c.complete(MODEL, "once", { max_tokens: 4 })).text.startsWith("sim-"));
  assert.equal((await c.embed(MODEL, ["a", "b"])).embeddings.length, 2);
  const texts = Array.from({ length: 120 }, (_, i) => `node many ${i}`);
  const rs = await c.inferMany("chat", MODEL, texts.map(body), { concurrency: 16 });
  rs.forEach((x, i) => assert.ok(x.text.startsWith(simHash(texts[i])), texts[i]));
  const all = await Promise.all(texts.slice(0, 40).map((t) => c.chat(MODEL, t)));
  all.forEach((x, i) => assert.ok(x.text.startsWith(simHash(texts[i]))));
  const mixed = await c.inferMany("chat", MODEL, [body("ok"), body("no [[sim:fail=400]]")], { returnErrors: true });
  assert.ok(mixed[0] instanceof L.Result);
  assert.ok(mixed[1] instanceof L.InvalidRequest);
  await assert.rejects(c.inferMany("chat", MODEL, [body("ok"), body("no [[sim:fail=400]]")]), L.InvalidRequest);
  c.close();
});

test("streams", LIVE, async () => {
  const c = new L.Client(ENDPOINT);
  const s = c.stream(MODEL, "node stream [[sim:tokens=10]]");
  const pieces = [];
  for await (const piece of s) pieces.push(piece);
  assert.ok(pieces.length >= 2);
  assert.ok(s.text.startsWith(simHash("node stream [[sim:tokens=10]]")));
  assert.ok(s.result && s.result.usage.totalTokens > 0);
  const early = c.stream(MODEL, "early [[sim:tokens=50,delay_ms=200]]");
  for await (const piece of early) {
    assert.ok(piece);
    break; // leaving the loop cancels the request
  }
  assert.equal(c.pending.size, 0);
  const bad = c.stream(MODEL, "bad [[sim:fail=429]]");
  await assert.rejects(async () => {
    for await (const piece of bad) assert.fail(piece);
  }, L.RateLimited);
  c.close();
});

test("every error class", LIVE, async () => {
  const c = new L.Client(ENDPOINT, { timeout: 30000 });
  await assert.rejects(c.chat(MODEL, "x [[sim:fail=429]]"), (e) => e instanceof L.RateLimited && e.status === 429 && e.retryable);
  await assert.rejects(c.chat(MODEL, "x [[sim:fail=502]]"), (e) => e instanceof L.ProviderError && e.status === 502 && e.body.length > 0);
  await assert.rejects(c.chat(MODEL, "x [[sim:fail=400]]"), L.InvalidRequest);
  await assert.rejects(c.chat(MODEL, "x [[sim:context_length]]"), L.ContextLength);
  await assert.rejects(c.chat(MODEL, "x [[sim:fail=401]]"), L.AuthError);
  await assert.rejects(c.chat(MODEL, "x [[sim:fail=408]]"), (e) => e.constructor === L.Timeout);
  await assert.rejects(c.chat(MODEL, "slow [[sim:delay_ms=5000]]", { timeout: 300, header: { deadline_ms: 60000 } }),
    (e) => e.constructor === L.Timeout && e.detail.includes("client"));
  await assert.rejects(c.chat(MODEL, "slow [[sim:delay_ms=5000]]", { timeout: 300 }), L.DeadlineExceeded);
  await assert.rejects(c.chat(MODEL, "nobody", { pool: "no-such-pool" }), L.NotFound);
  const p = c.chat(MODEL, "cancel me [[sim:delay_ms=5000]]", { requestId: "cancel-me" });
  c.cancel("cancel-me");
  await assert.rejects(p, L.Cancelled);
  const ac = new AbortController();
  const q = c.chat(MODEL, "abort me [[sim:delay_ms=5000]]", { signal: ac.signal });
  ac.abort();
  await assert.rejects(q, L.Cancelled);
  const flood = await c.inferMany("chat", MODEL,
    Array.from({ length: 260 }, (_, i) => body(`flood ${i} [[sim:delay_ms=1000]]`)), { concurrency: 260, returnErrors: true });
  const over = flood.find((x) => x instanceof L.Overloaded);
  assert.ok(over && over instanceof L.Unavailable && over.retryable, "no Overloaded among the flood");
  c.close();
});

test("batches", LIVE, async () => {
  const c = new L.Client(ENDPOINT);
  const items = Array.from({ length: 30 }, (_, i) => ({ custom_id: `c${i}`, body: body(`nbatch ${i}`) }));
  items.push({ custom_id: "bad", body: body("x [[sim:fail=400]]") });
  const b = await c.batches.submit(MODEL, items, { mode: "realtime" });
  const st = await c.batches.wait(b, { timeout: 60000, pollInterval: 100 });
  assert.equal(st.state, "completed");
  assert.equal(st.counts.total, 31);
  const rs = await c.batches.results(b);
  assert.deepEqual(rs.map((r) => r.customId), items.map((i) => i.custom_id));
  rs.slice(0, 30).forEach((r, i) => assert.ok(r.ok && r.text.startsWith(simHash(`nbatch ${i}`))));
  assert.ok(!rs[30].ok && rs[30].error instanceof L.InvalidRequest);
  const slow = await c.batches.submit(MODEL, Array.from({ length: 200 }, (_, i) => body(`nslow ${i} [[sim:delay_ms=3000]]`)), { mode: "realtime" });
  assert.ok(["cancelling", "cancelled"].includes((await c.batches.cancel(slow)).state));
  assert.equal((await c.batches.wait(slow, { timeout: 60000, pollInterval: 100 })).state, "cancelled");
  assert.ok((await c.batches.list()).some((x) => x.batch === b));
  await assert.rejects(c.batches.status("no-such-batch"), L.NotFound);
  c.close();
});

test("broker kill -9 and restart with calls outstanding", LIVE, async () => {
  const c = new L.Client(ENDPOINT, { timeout: 30000, brokerTimeout: 20000 });
  await waitSim((n) => n === 0, "an idle sim");
  const texts = Array.from({ length: 30 }, (_, i) => `node restart ${i} [[sim:delay_ms=300]]`);
  const all = c.inferMany("chat", MODEL, texts.map(body), { concurrency: 30, returnErrors: true });
  await waitSim((n) => n >= 5, "requests at the sim");
  await restartBroker();
  const rs = await all;
  for (let i = 0; i < rs.length; i++) {
    // retryable failures right after a restart (overloaded while workers say hello): again
    if (rs[i] instanceof L.LlmqError && rs[i].retryable) rs[i] = await c.chat(MODEL, texts[i], { max_tokens: 8 });
    assert.ok(rs[i].text.startsWith(simHash(texts[i])), String(rs[i]));
  }
  assert.ok(c.reconnects >= 1);
  c.close();
});

test("a script that never calls close() exits when its work is done", LIVE, () => {
  const script = path.join(here, ".noclose.mjs");
  fs.writeFileSync(script, `import { Client } from "llmq-client";
const c = new Client(${JSON.stringify(ENDPOINT)});
const r = await c.chat(${JSON.stringify(MODEL)}, "bye", { max_tokens: 4 });
console.log(r.text);
`);
  try {
    const p = spawnSync(process.execPath, [script], { timeout: 20000, encoding: "utf8" });
    assert.equal(p.status, 0, p.stderr);
    assert.ok(p.stdout.startsWith("sim-"));
  } finally {
    fs.rmSync(script, { force: true });
  }
});

test("README examples run as written", LIVE, () => {
  const require = createRequire(import.meta.url);
  const readme = path.join(path.dirname(require.resolve("llmq-client/package.json")), "README.md");
  const blocks = [...fs.readFileSync(readme, "utf8").matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.length >= 3);
  blocks.forEach((code, i) => {
    const file = path.join(here, `.readme-${i}.${code.includes("require(") ? "cjs" : "mjs"}`);
    fs.writeFileSync(file, code);
    try {
      const p = spawnSync(process.execPath, [file], {
        timeout: 60000, encoding: "utf8", env: { ...process.env, LLMQ_ENDPOINT: ENDPOINT },
      });
      assert.equal(p.status, 0, `README block ${i}:\n${code}\n${p.stderr}`);
      assert.ok(p.stdout.trim(), `block ${i} printed nothing`);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
});
