/*  llmq.js - a small Node client for the llmq broker.

    Speaks the wire protocol (proto/PROTOCOL.md) directly with the npm
    packages `zeromq` (v6) and `@msgpack/msgpack`:

      const { Client } = require("./llmq");
      const c = new Client("tcp://127.0.0.1:5555");
      const r = await c.infer("chat", "gpt-4o-mini", { messages: [{ role: "user", content: "hi" }] });
      console.log(r.ok, r.text, r.usage);
      const results = await Promise.all(bodies.map((b) => c.submit("chat", model, b)));
      const final = await c.stream("gpt-4o-mini", body, (delta) => process.stdout.write(delta));
      c.close();

    submit() resolves when the result arrives (it waits for room in the
    window first). Reliability is the lazy pirate of the C client: while
    requests are outstanding the client pings a silent broker every second;
    after `timeout` ms of silence, or when the connection drops (a restarted
    broker answers pings but has lost our requests), it opens a new socket
    with the same routing id and resends everything outstanding; answers for ids it no
    longer waits for are dropped, so each request resolves exactly once.
*/
"use strict";

const crypto = require("crypto");
const zmq = require("zeromq");
const { encode, decode } = require("@msgpack/msgpack");

const PROTOCOL_VERSION = 1;
const DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555";
const MAX_MESSAGE = 64 * 1024 * 1024;
const OPS = ["chat", "completion", "embedding"];

class Result {
  constructor(header, body, resends, elapsedMs) {
    this.id = header.id;
    this.ok = !!header.ok;
    this.body = body === undefined ? null : body;
    this.usage = header.usage || {};
    this.latencyMs = header.latency_ms || 0;
    this.attempts = header.attempts || 0;
    this.attempt = header.attempt || 0;
    this.worker = header.worker || null;
    this.cached = !!header.cached;
    this.meta = header.meta === undefined ? null : header.meta;
    this.error = this.ok ? null : header.error || { code: "internal" };
    this.resends = resends || 0;
    this.elapsedMs = elapsedMs || 0;
  }

  /** choices[0].message.content (chat) or choices[0].text, else null. */
  get text() {
    const choice = this.body && Array.isArray(this.body.choices) ? this.body.choices[0] : null;
    if (!choice) return null;
    if (choice.message && typeof choice.message.content === "string") return choice.message.content;
    return typeof choice.text === "string" ? choice.text : null;
  }
}

function delta(chunk) {
  const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
  if (!choice) return "";
  if (choice.delta && typeof choice.delta.content === "string") return choice.delta.content;
  return typeof choice.text === "string" ? choice.text : "";
}

class Client {
  /**
   * @param {string} endpoint broker frontend
   * @param {{timeout?: number, window?: number, giveUp?: number}} options
   *   timeout: broker liveness in ms (default 3000); window: max outstanding
   *   requests (default 256); giveUp: fail outstanding requests after this
   *   many ms of broker silence (default: never).
   */
  constructor(endpoint = DEFAULT_ENDPOINT, options = {}) {
    this.endpoint = endpoint;
    this.timeout = options.timeout || 3000;
    this.heartbeat = Math.min(1000, Math.floor(this.timeout / 3));
    this.window = Math.max(1, options.window || 256);
    this.giveUp = options.giveUp || 0;
    this.routingId = "llmq-js-" + crypto.randomBytes(8).toString("hex");
    this.pending = new Map(); // id -> request (insertion order = submit order)
    this.waiters = []; // resolvers waiting for room in the window
    this.nextId = 0;
    this.lastRecv = Date.now();
    this.lastHeard = this.lastRecv;
    this.lastPing = 0;
    this.pongWaiters = [];
    this.statusWaiters = [];
    this.dropped = false;
    this.lastReconnect = 0;
    this.reconnects = 0;
    this.resent = 0;
    this.duplicates = 0;
    this.closed = false;
    this.sendChain = Promise.resolve();
    this._connect();
    this.timer = setInterval(() => this._timers(), Math.max(10, Math.floor(this.heartbeat / 4)));
    this.timer.unref();
  }

  _connect() {
    if (this.sock) this.sock.close();
    const sock = new zmq.Dealer({
      routingId: this.routingId,
      maxMessageSize: MAX_MESSAGE,
      linger: 0,
      sendHighWaterMark: 100000,
      receiveHighWaterMark: 100000,
    });
    // A restarted broker answers pings but has forgotten our requests: a
    // dropped connection, not silence, is what tells us.
    // The reconnect itself happens in _timers, at most once per heartbeat.
    sock.events.on("disconnect", () => {
      if (sock === this.sock && !this.closed && this.pending.size > 0) this.dropped = true;
    });
    sock.connect(this.endpoint);
    this.sock = sock;
    this._receiveLoop(sock);
  }

  /** Lazy pirate: new socket, same identity, resend everything. */
  _reconnect() {
    this._connect();
    this.dropped = false;
    this.lastReconnect = Date.now();
    this.reconnects++;
    for (const req of this.pending.values()) {
      req.resends++;
      this.resent++;
      this._sendRequest(req);
    }
    const now = Date.now();
    this.lastRecv = now;
    this._send({ t: "ping" });
    this.lastPing = now;
  }

  async _receiveLoop(sock) {
    while (!sock.closed) {
      let frames;
      try {
        frames = await sock.receive();
      } catch (e) {
        return; // socket closed (reconnect or close)
      }
      if (sock !== this.sock) return;
      this.lastRecv = this.lastHeard = Date.now();
      this._handle(frames);
    }
  }

  /** zeromq 6 allows one send at a time per socket: chain them. */
  _send(header, payload) {
    const frames = [Buffer.from(encode({ v: PROTOCOL_VERSION, ...header }))];
    if (payload) frames.push(payload);
    const sock = this.sock;
    this.sendChain = this.sendChain
      .then(() => (sock.closed ? undefined : sock.send(frames)))
      .catch(() => {}); // lost sends are covered by the next reconnect
    return this.sendChain;
  }

  _sendRequest(req) {
    const header = { t: "req", id: req.id, op: req.op, model: req.model, ...req.opts };
    if (req.onChunk) header.stream = true;
    if (header.deadline_ms) {
      header.deadline_ms = Math.max(1, header.deadline_ms - (Date.now() - req.sentAt));
    }
    this._send(header, req.payload);
  }

  _handle(frames) {
    let header;
    try {
      header = decode(frames[0]);
    } catch (e) {
      return; // not decodable: drop it, never crash
    }
    if (!header || typeof header !== "object" || header.v !== PROTOCOL_VERSION) return;
    const payload = frames.length > 1 ? frames[1] : null;
    switch (header.t) {
      case "res": {
        const req = this.pending.get(header.id);
        if (!req) {
          this.duplicates++;
          return;
        }
        let body = null;
        if (payload && payload.length) {
          try {
            body = decode(payload);
          } catch (e) {
            header = { ...header, ok: false, error: { code: "internal", message: "bad response body" } };
          }
        }
        this._finish(req, new Result(header, body, req.resends, Date.now() - req.sentAt));
        break;
      }
      case "chunk": {
        const req = this.pending.get(header.id);
        if (!req || !req.onChunk || !payload) return;
        const seq = header.seq || 0;
        if (seq <= req.lastSeq) return; // a resend restarted the stream
        req.lastSeq = seq;
        let chunk;
        try {
          chunk = decode(payload);
        } catch (e) {
          return;
        }
        req.onChunk(delta(chunk), chunk);
        break;
      }
      case "pong":
        for (const w of this.pongWaiters.splice(0)) w(`${header.broker} ${header.version}`);
        break;
      case "status": {
        let status = {};
        try {
          status = payload ? decode(payload) : {};
        } catch (e) {
          status = {};
        }
        for (const w of this.statusWaiters.splice(0)) w(status);
        break;
      }
      case "error": {
        const req = this.pending.get(header.id);
        if (req) {
          const h = { id: req.id, ok: false, error: { code: header.code, message: header.message } };
          this._finish(req, new Result(h, null, req.resends, Date.now() - req.sentAt));
        }
        break;
      }
      default:
        break;
    }
  }

  _finish(req, result) {
    this.pending.delete(req.id);
    req.resolve(result);
    while (this.waiters.length && this.pending.size < this.window) this.waiters.shift()();
  }

  _timers() {
    if (this.closed) return;
    if (this.pending.size === 0) {
      this.dropped = false;
      return;
    }
    const now = Date.now();
    if (this.giveUp && now - this.lastHeard >= this.giveUp) {
      for (const req of [...this.pending.values()]) {
        const h = { id: req.id, ok: false, error: { code: "timeout", message: "broker unreachable", retryable: true } };
        this._finish(req, new Result(h, null, req.resends, now - req.sentAt));
      }
      return;
    }
    const silent = now - this.lastRecv;
    if (this.dropped && now - this.lastReconnect >= this.heartbeat) {
      this._reconnect();
    } else if (silent >= this.timeout) {
      this._reconnect();
    } else if (silent >= this.heartbeat && now - this.lastPing >= this.heartbeat) {
      this._send({ t: "ping" });
      this.lastPing = now;
    }
  }

  _withTimeout(list, timeoutMs) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const i = list.indexOf(done);
        if (i >= 0) list.splice(i, 1);
        resolve(null);
      }, timeoutMs);
      function done(value) {
        clearTimeout(timer);
        resolve(value);
      }
      list.push(done);
    });
  }

  /** Resolves to "broker version", or null if no pong came in time. */
  ping(timeoutMs = 3000) {
    const p = this._withTimeout(this.pongWaiters, timeoutMs);
    this._send({ t: "ping" });
    return p;
  }

  /** Resolves to the broker's status object, or null. */
  status(timeoutMs = 3000) {
    const p = this._withTimeout(this.statusWaiters, timeoutMs);
    this._send({ t: "status" });
    return p;
  }

  /**
   * Send one request; resolves to its Result. opts: pool, deadline_ms,
   * priority, max_attempts, cache, trace, meta, onChunk(delta, chunk).
   */
  async submit(op, model, body, opts = {}) {
    if (!OPS.includes(op)) throw new Error(`op must be one of ${OPS.join(", ")}`);
    if (!model) throw new Error("model is required");
    if (this.closed) throw new Error("client is closed");
    while (this.pending.size >= this.window) await new Promise((r) => this.waiters.push(r));
    const { onChunk, ...wire } = opts;
    const id = "j" + ++this.nextId;
    const now = Date.now();
    if (this.pending.size === 0) this.lastRecv = this.lastHeard = now;
    return new Promise((resolve) => {
      const req = {
        id, op, model, opts: wire, onChunk: onChunk || null, resolve,
        payload: Buffer.from(encode(body)), sentAt: now, lastSeq: -1, resends: 0,
      };
      this.pending.set(id, req);
      this._sendRequest(req);
    });
  }

  infer(op, model, body, opts = {}) {
    return this.submit(op, model, body, opts);
  }

  /** Streaming chat: onChunk(delta, chunk) for each chunk; resolves to the Result. */
  stream(model, body, onChunk, opts = {}) {
    return this.submit("chat", model, body, { ...opts, onChunk });
  }

  /** All bodies through the window; Results in input order. */
  inferMany(op, model, bodies, opts = {}) {
    return Promise.all(bodies.map((b) => this.submit(op, model, b, opts)));
  }

  cancel(id) {
    if (this.pending.has(id)) this._send({ t: "cancel", id });
  }

  get outstanding() {
    return this.pending.size;
  }

  close() {
    this.closed = true;
    clearInterval(this.timer);
    if (this.sock) this.sock.close();
  }
}

module.exports = { Client, Result, PROTOCOL_VERSION, DEFAULT_ENDPOINT };
