// The shared conformance cases (bindings/conformance.json), also run by the
// Python package's tests.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import * as L from "llmq-client";
import { encode } from "@msgpack/msgpack";
import { CASES, ENDPOINT, LIVE, MODEL } from "./util.mjs";

test("installed copy", () => {
  const where = process.env.LLMQ_TEST_INSTALLED;
  if (where) assert.ok(import.meta.resolve("llmq-client").includes("/node_modules/llmq-client/"));
});

test("errors", () => {
  for (const c of CASES.errors) {
    const e = L.errorFrom(c.error, "r-1");
    assert.equal(e.name, c.class, JSON.stringify(c));
    assert.equal(e.constructor.name, c.class);
    for (const name of c.isa) assert.ok(e instanceof L[name], `${c.class} isa ${name}`);
    assert.ok(e instanceof Error);
    assert.equal(e.code, c.code);
    assert.equal(e.retryable, c.retryable, JSON.stringify(c));
    assert.equal(e.status, c.status);
    assert.equal(e.requestId, "r-1");
    if ("body" in c) assert.equal(e.body, c.body);
  }
});

test("texts and deltas", () => {
  for (const c of CASES.texts) assert.equal(L.textOf(c.body), c.text, JSON.stringify(c));
  for (const c of CASES.deltas) assert.equal(L.deltaOf(c.chunk), c.delta, JSON.stringify(c));
});

test("certificates", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "llmq-certs-"));
  try {
    for (const c of CASES.certs) {
      const p = path.join(dir, "cert");
      fs.writeFileSync(p, c.text);
      if (c.error) assert.throws(() => L.readCert(p));
      else assert.deepEqual(L.readCert(p), { publicKey: c.public, secretKey: c.secret }, c.name);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a body over the frame limit is refused, never sent", async () => {
  const c = new L.Client("tcp://127.0.0.1:1");
  await assert.rejects(c.chat(MODEL, "x".repeat(64 * 1024 * 1024)), L.InvalidRequest);
  assert.equal(c.pending.size, 0);
  c.close();
});

test("a restarted stream is never spliced", async () => {
  const c = new L.Client("tcp://127.0.0.1:1", { brokerTimeout: 60000 });
  const s = c.stream(MODEL, "x");
  const it = s[Symbol.asyncIterator]();
  const first = it.next();
  const id = s.id;
  const chunk = (seq, text, attempt) => c._onFrames([
    encode({ v: 1, t: "chunk", id, seq, attempt }), encode({ choices: [{ delta: { content: text } }] })]);
  chunk(0, "a", 1);
  chunk(0, "b", 2); // restarted before anything was read: reset
  assert.equal((await first).value, "b");
  chunk(1, "c", 2);
  assert.equal((await it.next()).value, "c");
  chunk(0, "x", 3); // restarted after text was read: interrupted
  await assert.rejects(it.next(), (e) => e instanceof L.StreamInterrupted && e.retryable);
  c.close();
});

function check(c, result, pieces, error) {
  const want = c.expect;
  if (want.error) {
    assert.ok(error, `${c.name}: no error`);
    assert.equal(error.name, want.error, c.name);
    assert.ok(error instanceof L[want.isa || "LlmqError"]);
    assert.equal(error.code, want.code);
    if ("status" in want) assert.equal(error.status, want.status);
    if ("retryable" in want) assert.equal(error.retryable, want.retryable);
    return;
  }
  assert.equal(error, null, `${c.name}: ${error}`);
  if (want.text_startswith) {
    const text = pieces ? pieces.join("") : result.text;
    assert.ok(text.startsWith(want.text_startswith), `${c.name}: ${text}`);
  }
  if (want.min_pieces) assert.ok(pieces.length >= want.min_pieces && result.usage.totalTokens > 0);
  if (want.usage) assert.ok(result.usage.totalTokens > 0 && result.costUsd !== null);
  if (want.embeddings) assert.equal(result.embeddings.length, want.embeddings);
}

test("live conformance cases", LIVE, async (t) => {
  const client = new L.Client(ENDPOINT, { timeout: 20000 });
  try {
    for (const c of CASES.live) {
      await t.test(c.name, async () => {
        const opts = { ...c.params };
        if (c.timeout_s !== undefined) opts.timeout = c.timeout_s * 1000;
        let result = null;
        let pieces = null;
        let error = null;
        try {
          if (c.call === "stream") {
            const s = client.stream(MODEL, c.input, opts);
            pieces = [];
            for await (const p of s) pieces.push(p);
            result = s.result;
          } else {
            result = await client[c.call](MODEL, c.input, opts);
          }
        } catch (e) {
          error = e;
        }
        check(c, result, pieces, error);
      });
    }
  } finally {
    client.close();
  }
});
