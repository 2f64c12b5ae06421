"use strict";
/* llmq-client: the Node client for the llmq broker (proto/PROTOCOL.md v1),
   on zeromq 6 and @msgpack/msgpack. See README.md. */

const crypto = require("crypto");
const fs = require("fs");
const zmq = require("zeromq");
const { encode, decode } = require("@msgpack/msgpack");
const E = require("./errors.cjs");

const PROTOCOL_VERSION = 1;
const DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555";
const MAX_MESSAGE = 64 * 1024 * 1024;
const OPS = ["chat", "completion", "embedding"];
const GRACE_MS = 1000; // waited past a request's deadline for the broker's answer
const OPTION_KEYS = new Set(["timeout", "requestId", "pool", "priority", "meta", "header", "signal"]);
const TERMINAL = new Set(["completed", "cancelled", "expired", "failed"]);
const AFTER_END = Number.MAX_SAFE_INTEGER; // an `after` beyond the end: a status poll

/** ms of broker silence before calls fail: $LLMQ_GIVE_UP_MS (ms, or 90s / 2m / 500ms; 0: never). */
function giveUpDefault(fallback) {
  const text = (process.env.LLMQ_GIVE_UP_MS || "").trim();
  if (!text) return fallback;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text);
  if (!m) return fallback;
  const v = Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2] || "ms"];
  return v > 0 ? v : Infinity;
}

/** choices[0].message.content (chat) or choices[0].text, else null. */
function textOf(body) {
  const choice = body && Array.isArray(body.choices) ? body.choices[0] : null;
  if (!choice || typeof choice !== "object") return null;
  if (choice.message && typeof choice.message.content === "string") return choice.message.content;
  return typeof choice.text === "string" ? choice.text : null;
}

/** The text of one chat.completion.chunk (or a text completion chunk). */
function deltaOf(chunk) {
  const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
  if (!choice || typeof choice !== "object") return "";
  if (choice.delta && typeof choice.delta.content === "string") return choice.delta.content;
  return typeof choice.text === "string" ? choice.text : "";
}

function usageOf(u) {
  const m = u && typeof u === "object" ? u : {};
  const n = (x) => (typeof x === "number" ? x : 0);
  return {
    promptTokens: n(m.prompt_tokens), completionTokens: n(m.completion_tokens),
    totalTokens: n(m.total_tokens), costUsd: typeof m.cost_usd === "number" ? m.cost_usd : null,
  };
}

class Result {
  constructor(req, h, body) {
    this.id = req.id;
    this.op = req.op;
    this.model = req.model;
    this.body = body === undefined ? null : body;
    this.usage = usageOf(h.usage);
    this.latencyMs = h.latency_ms || 0;
    this.attempts = h.attempts || 0;
    this.attempt = h.attempt || 0;
    this.worker = h.worker || null;
    this.cached = !!h.cached;
    this.meta = h.meta === undefined ? null : h.meta;
    this.elapsedMs = Date.now() - req.sent;
  }
  get text() { return textOf(this.body); }
  get costUsd() { return this.usage.costUsd; }
  get finishReason() {
    const c = this.body && Array.isArray(this.body.choices) ? this.body.choices[0] : null;
    return c && typeof c.finish_reason === "string" ? c.finish_reason : null;
  }
  get embeddings() {
    const data = this.body && Array.isArray(this.body.data) ? this.body.data : [];
    return data.map((d) => (d && Array.isArray(d.embedding) ? d.embedding : []));
  }
}

function batchStatusOf(h) {
  const c = h.counts && typeof h.counts === "object" ? h.counts : {};
  return {
    batch: h.batch || "", state: h.state || "", mode: h.mode || null, model: h.model || null,
    counts: { total: c.total || 0, done: c.done || 0, failed: c.failed || 0 },
    usage: usageOf(h.usage), error: h.error ? E.errorFrom(h.error) : null,
    done: TERMINAL.has(h.state),
  };
}

function batchResultOf(m) {
  if (!m || typeof m !== "object") {
    return { customId: "", ok: false, body: null, error: E.errorFrom({ code: "internal" }), usage: usageOf(null), text: null };
  }
  const ok = !!m.ok;
  return {
    customId: String(m.custom_id ?? ""), ok, body: m.body ?? null,
    error: ok ? null : E.errorFrom(m.error), usage: usageOf(m.usage), text: textOf(m.body),
  };
}

/** {publicKey, secretKey|null} of a CZMQ zcert file (ZPL text). */
function readCert(path) {
  let publicKey = null;
  let secretKey = null;
  for (const line of fs.readFileSync(path, "utf8").split("\n")) {
    const m = /^\s*(public-key|secret-key)\s*=\s*"?([^"\s]*)"?\s*$/.exec(line);
    if (!m) continue;
    if (m[1] === "public-key") publicKey = m[2];
    else secretKey = m[2];
  }
  if (!publicKey || publicKey.length !== 40) throw new Error(`${path}: no curve public-key in this certificate`);
  if (secretKey !== null && secretKey.length !== 40) throw new Error(`${path}: malformed curve secret-key`);
  return { publicKey, secretKey };
}

/** {serverKey, publicKey, secretKey} or null without CURVE (see the CURVE contract). */
function curveKeys(curveCert, brokerKey) {
  const cert = curveCert ?? process.env.LLMQ_CURVE_CERT;
  const bkey = brokerKey ?? process.env.LLMQ_BROKER_KEY;
  if (!cert && !bkey) return null;
  if (!bkey) throw new Error("CURVE: curveCert given but no brokerKey (or LLMQ_BROKER_KEY)");
  if (!cert) throw new Error("CURVE: brokerKey given but no curveCert (or LLMQ_CURVE_CERT)");
  const serverKey = bkey.length === 40 && !fs.existsSync(bkey) ? bkey : readCert(bkey).publicKey;
  let k = readCert(cert);
  if (k.secretKey === null && fs.existsSync(cert + "_secret")) k = readCert(cert + "_secret");
  if (k.secretKey === null) throw new Error(`CURVE: ${cert} has no secret-key (pass the NAME_secret file)`);
  return { serverKey, publicKey: k.publicKey, secretKey: k.secretKey };
}

function chatBody(messages, params) {
  const msgs = typeof messages === "string" ? [{ role: "user", content: messages }] : messages.map((m) => ({ ...m }));
  return { ...params, messages: msgs };
}

/** Split options into (request options, body params). */
function splitOptions(options) {
  const opts = {};
  const params = {};
  for (const [k, v] of Object.entries(options || {})) (OPTION_KEYS.has(k) ? opts : params)[k] = v;
  return [opts, params];
}

module.exports = {
  PROTOCOL_VERSION, DEFAULT_ENDPOINT, MAX_MESSAGE, OPS, GRACE_MS, TERMINAL, AFTER_END,
  textOf, deltaOf, usageOf, Result, batchStatusOf, batchResultOf, readCert, curveKeys,
  chatBody, splitOptions, giveUpDefault, encode, decode, zmq, crypto,
};
