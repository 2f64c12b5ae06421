"use strict";
/* llmq-client (CommonJS entry; index.mjs re-exports it as ESM). */

const E = require("./errors.cjs");
const U = require("./client.cjs");

const { encode, decode, zmq, crypto } = U;

/** One outstanding request. */
class Req {
  constructor(id, op, model, header, payload, stream, timeoutMs) {
    Object.assign(this, { id, op, model, header, payload, stream });
    this.sent = Date.now();
    this.expires = timeoutMs == null ? null : this.sent + timeoutMs + U.GRACE_MS;
    this.resends = 0;
    this.mark = 0; // submission number, for the pong's `pending`
    this.seq = -1;
    this.attempt = 0;
    this.yielded = false;
    this.pieces = [];
    this.done = false;
    this.result = null;
    this.error = null;
    this.waiters = [];
  }
}

class Client {
  /**
   * @param {string} [endpoint] broker frontend (default $LLMQ_ENDPOINT or tcp://127.0.0.1:5555)
   * @param {object} [options] timeout (ms per request, default 60000; null: none),
   *   brokerTimeout (ms of broker silence before Unavailable, default 30000),
   *   concurrency (inferMany, default 256), heartbeat (1000), liveness (3000),
   *   curveCert, brokerKey (default $LLMQ_CURVE_CERT, $LLMQ_BROKER_KEY), routingId.
   */
  constructor(endpoint, options = {}) {
    this.endpoint = endpoint || process.env.LLMQ_ENDPOINT || U.DEFAULT_ENDPOINT;
    this.timeout = options.timeout === undefined ? 60000 : options.timeout;
    this.brokerTimeout = options.brokerTimeout ?? U.giveUpDefault(30000);
    this.concurrency = Math.max(1, options.concurrency ?? 256);
    this.heartbeat = options.heartbeat ?? 1000;
    this.liveness = Math.max(options.liveness ?? 3000, this.heartbeat);
    this.idleCloseMs = options.idleCloseMs ?? 500;
    this.curve = U.curveKeys(options.curveCert, options.brokerKey);
    this.routingId = options.routingId || "llmq-js-" + crypto.randomBytes(8).toString("hex");
    this.pending = new Map();
    this.inbox = [];
    this.inboxWaiters = [];
    this.controlChain = Promise.resolve();
    this.controls = 0;
    this.outbox = [];
    this.flushing = false;
    this.nextId = 0;
    this.submitted = 0; // requests submitted so far
    this.pingMark = 0; // submitted when the last ping went out
    this.pingsOut = 0; // pings not yet answered
    this.sock = null;
    this.lastRecv = this.lastHeard = this.lastPing = this.lastReconnect = this.lastActive = 0;
    this.lastScan = 0;
    this.dropped = false;
    this.authFailed = false;
    this.reconnects = 0;
    this.resent = 0;
    this.closed = false;
    this.batches = new Batches(this);
  }

  // -- socket ------------------------------------------------------------
  /* The socket lives only while something is outstanding: when idle for
     idleCloseMs it is closed, so a script that never calls close() exits. */
  _ensureSocket() {
    if (this.closed) throw new E.LlmqError("client is closed", { code: "internal" });
    if (!this.sock) {
      this._open();
      this.lastRecv = this.lastHeard = Date.now();
    }
  }

  _open() {
    const o = {
      routingId: this.routingId, maxMessageSize: U.MAX_MESSAGE, linger: 0,
      sendHighWaterMark: 100000, receiveHighWaterMark: 100000,
      receiveTimeout: Math.max(10, Math.floor(this.heartbeat / 4)),
    };
    if (this.curve) {
      o.curveServerKey = this.curve.serverKey;
      o.curvePublicKey = this.curve.publicKey;
      o.curveSecretKey = this.curve.secretKey;
    }
    const sock = new zmq.Dealer(o);
    // A restarted broker answers pings but has forgotten our requests: a
    // dropped connection, not silence, is what tells us.
    sock.events.on("disconnect", () => {
      if (sock === this.sock && this.pending.size > 0) this.dropped = true;
    });
    sock.events.on("handshake:error:auth", () => {
      if (sock === this.sock) this.authFailed = true;
    });
    sock.connect(this.endpoint);
    this.sock = sock;
    this.lastActive = Date.now();
    this._loop(sock);
  }

  _closeSocket() {
    const sock = this.sock;
    this.sock = null;
    this.outbox = [];
    if (sock && !sock.closed) sock.close();
  }

  close() {
    this.closed = true;
    this._closeSocket();
    for (const req of [...this.pending.values()]) {
      this._finish(req, null, new E.Cancelled("client closed", { requestId: req.id }));
    }
  }

  _busy() {
    return this.pending.size > 0 || this.controls > 0;
  }

  async _loop(sock) {
    while (this.sock === sock && !sock.closed) {
      let frames = null;
      try {
        frames = await sock.receive();
      } catch (e) {
        if (this.sock !== sock || sock.closed) return;
      }
      if (frames) this._onFrames(frames);
      this._tick();
      const now = Date.now();
      if (this._busy()) this.lastActive = now;
      else if (now - this.lastActive >= this.idleCloseMs && this.outbox.length === 0) {
        if (this.sock === sock) this._closeSocket();
        return;
      }
    }
  }

  /** zeromq 6 allows one send at a time per socket: a queue. */
  _send(header, payload) {
    const frames = [encode({ v: U.PROTOCOL_VERSION, ...header })];
    if (payload) frames.push(payload);
    this.outbox.push(frames);
    if (!this.flushing) this._flush();
  }

  async _flush() {
    this.flushing = true;
    try {
      while (this.outbox.length && this.sock) {
        const sock = this.sock;
        const frames = this.outbox.shift();
        try {
          await sock.send(frames);
        } catch (e) {
          /* lost sends are covered by the next reconnect / control retry */
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  _reconnect() {
    this._closeSocket();
    this._open();
    this.dropped = false;
    this.authFailed = false;
    const now = Date.now();
    this.lastReconnect = this.lastPing = this.lastRecv = now;
    this.reconnects++;
    this.pingsOut = 0; // the old socket's pongs are lost
    for (const req of this.pending.values()) {
      req.resends++;
      this.resent++;
      this._sendReq(req, true);
    }
    this._heartbeat(now);
  }

  // -- requests ----------------------------------------------------------
  _submit(op, model, body, stream, options = {}) {
    if (!U.OPS.includes(op)) throw new TypeError(`op must be one of ${U.OPS.join(", ")}`);
    if (!model) throw new TypeError("model is required");
    this._ensureSocket();
    const timeout = options.timeout === undefined ? this.timeout : options.timeout;
    const h = { t: "req", op, model };
    for (const [k, v] of Object.entries(options.header || {})) if (v != null) h[k] = v;
    for (const k of ["pool", "priority", "meta"]) if (options[k] != null) h[k] = options[k];
    if (stream) h.stream = true;
    if (timeout != null && h.deadline_ms == null) h.deadline_ms = Math.max(1, Math.floor(timeout));
    const id = options.requestId || "j" + ++this.nextId;
    if (this.pending.has(id)) throw new TypeError(`request id ${id} is already outstanding`);
    h.id = id;
    const payload = encode(body);
    if (payload.length > U.MAX_MESSAGE - 65536) {
      // a broker drops a frame over the limit with the connection, and every resend would too
      throw new E.InvalidRequest(`request body of ${payload.length} bytes is over the frame limit`);
    }
    const req = new Req(id, op, model, h, payload, stream, timeout);
    req.mark = ++this.submitted;
    const idle = this.pending.size === 0;
    if (idle) this.lastRecv = this.lastHeard = req.sent;
    this.pending.set(id, req);
    this._sendReq(req);
    if (idle) this._heartbeat(req.sent); // work outstanding: heartbeat from now on
    if (options.signal) {
      const abort = () => this.cancel(id);
      if (options.signal.aborted) abort();
      else options.signal.addEventListener("abort", abort, { once: true });
    }
    return req;
  }

  _sendReq(req, resend = false) {
    let h = req.header;
    if (h.deadline_ms != null) h = { ...h, deadline_ms: Math.max(1, h.deadline_ms - (Date.now() - req.sent)) };
    if (resend) {
      // PROTOCOL.md 3.3: a resend is marked, so a restarted broker can attach it to the
      // worker that still holds it; a stream says which chunks it has seen.
      h = { ...h, resend: true };
      if (req.stream && req.seq >= 0) h.seq = req.seq;
    }
    this._send(h, req.payload);
  }

  _wait(req) {
    return new Promise((resolve, reject) => {
      const settle = () => (req.error ? reject(req.error) : resolve(req.result));
      if (req.done) settle();
      else req.waiters.push(settle);
    });
  }

  _finish(req, result, error) {
    if (req.done) return;
    this.pending.delete(req.id);
    req.done = true;
    req.result = result;
    req.error = error;
    for (const w of req.waiters.splice(0)) w();
  }

  _onFrames(frames) {
    this.lastRecv = this.lastHeard = Date.now();
    if (frames.length < 1 || frames.length > 2) return;
    let h;
    try {
      h = decode(frames[0]);
    } catch (e) {
      return; // not decodable: drop it, never crash
    }
    if (!h || typeof h !== "object" || h.v !== U.PROTOCOL_VERSION) return;
    const payload = frames.length > 1 ? frames[1] : null;
    if (h.t === "pong") this._onPong(h); // and to the inbox, for ping()
    if (h.t === "res") this._onRes(h, payload);
    else if (h.t === "chunk") this._onChunk(h, payload);
    else if (h.t === "error" && typeof h.id === "string" && this.pending.has(h.id)) {
      const req = this.pending.get(h.id);
      this._finish(req, null, E.errorFrom(h, req.id));
    } else {
      this.inbox.push([h, payload]);
      if (this.inbox.length > 4096) this.inbox.shift();
      for (const w of this.inboxWaiters.splice(0)) w();
    }
  }

  _onRes(h, payload) {
    const req = this.pending.get(h.id);
    if (!req) return; // a duplicate, or a request we gave up on
    if (!h.ok) {
      this._finish(req, null, E.errorFrom(h.error, req.id));
      return;
    }
    let body = null;
    try {
      body = payload && payload.length ? decode(payload) : null;
    } catch (e) {
      this._finish(req, null, E.errorFrom({ code: "internal", message: "bad response body" }, req.id));
      return;
    }
    this._finish(req, new U.Result(req, h, body), null);
  }

  _onChunk(h, payload) {
    const req = this.pending.get(h.id);
    if (!req || !req.stream || !payload) return;
    const seq = Number.isInteger(h.seq) ? h.seq : 0;
    const attempt = Number.isInteger(h.attempt) ? h.attempt : 0;
    if (seq <= req.seq || (attempt && req.attempt && attempt !== req.attempt)) {
      // A new dispatch attempt restarted the stream: never splice.
      if (req.yielded) {
        this.cancel(req.id);
        this._finish(req, null, new E.StreamInterrupted(
          "the stream restarted after its worker died; send the request again", { requestId: req.id }));
        return;
      }
      req.pieces.length = 0;
    }
    req.seq = seq;
    req.attempt = attempt || req.attempt;
    let piece = "";
    try {
      piece = U.deltaOf(decode(payload));
    } catch (e) {
      return;
    }
    if (piece) {
      req.pieces.push(piece);
      for (const w of req.waiters.splice(0)) w();
    }
  }

  _failAll(Cls, message) {
    for (const req of [...this.pending.values()]) this._finish(req, null, new Cls(message, { requestId: req.id }));
  }

  _tick() {
    if (this.pending.size === 0) {
      this.dropped = false;
      return;
    }
    const now = Date.now();
    if (now - this.lastScan >= 100) {
      this.lastScan = now;
      for (const req of [...this.pending.values()]) {
        if (req.expires !== null && now >= req.expires) {
          this.cancel(req.id);
          this._finish(req, null, new E.Timeout("no answer within the client's timeout", { requestId: req.id }));
        }
      }
    }
    if (this.authFailed) {
      this._failAll(E.AuthError, "the broker refused this client's CURVE key");
      return;
    }
    if (now - this.lastHeard >= this.brokerTimeout) {
      this._failAll(E.Unavailable, `broker unreachable: no answer from ${this.endpoint} for ${this.brokerTimeout} ms`);
      return;
    }
    const silent = now - this.lastRecv;
    if ((this.dropped && now - this.lastReconnect >= this.heartbeat) || silent >= this.liveness) {
      this._reconnect();
    } else if (now - this.lastPing >= this.heartbeat) {
      // Answers flowing or not: the broker must hear from us while we wait,
      // or it takes us for gone and drops our work (PROTOCOL.md 3.5).
      this._heartbeat(now);
    }
  }

  /** A heartbeat: a ping that puts this client under the broker's silence rule. */
  _heartbeat(now) {
    this._send({ t: "ping", heartbeat: true });
    this.lastPing = now;
    this.pingMark = this.submitted;
    this.pingsOut++;
  }

  /**
   * The pong to our latest heartbeat says how many of our requests the broker
   * holds; answers it sent before come before it. Waiting for more of those
   * sent before that ping means it dropped some (it took us for gone, or we
   * were slow to read): resend all outstanding, it ignores what it still
   * holds (PROTOCOL.md 3.5).
   */
  _onPong(h) {
    if (typeof h.pending !== "number") return; // not a heartbeat's pong, or an older broker
    this.pingsOut = Math.max(0, this.pingsOut - 1);
    if (this.pingsOut > 0) return; // a later heartbeat is still unanswered
    let waiting = 0;
    for (const req of this.pending.values()) if (req.mark <= this.pingMark) waiting++;
    if (waiting <= h.pending) return;
    for (const req of this.pending.values()) {
      req.resends++;
      this.resent++;
      this._sendReq(req, true);
    }
  }

  /** One request (op: chat, completion or embedding); resolves to a Result, rejects with an LlmqError. */
  infer(op, model, body, options = {}) {
    try {
      return this._wait(this._submit(op, model, body, false, options));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Chat: messages is an array of {role, content} or one user message. Options other than
   *  timeout, requestId, pool, priority, meta, header, signal go into the body (max_tokens, ...). */
  chat(model, messages, options = {}) {
    const [opts, params] = U.splitOptions(options);
    return this.infer("chat", model, U.chatBody(messages, params), opts);
  }

  complete(model, prompt, options = {}) {
    const [opts, params] = U.splitOptions(options);
    return this.infer("completion", model, { ...params, prompt }, opts);
  }

  embed(model, input, options = {}) {
    const [opts, params] = U.splitOptions(options);
    return this.infer("embedding", model, { ...params, input }, opts);
  }

  /** Streaming chat: `for await (const piece of client.stream(...))`; then stream.result. */
  stream(model, messages, options = {}) {
    const [opts, params] = U.splitOptions(options);
    return new Stream(this, () => this._submit("chat", model, U.chatBody(messages, params), true, opts));
  }

  /** Every body, at most `concurrency` in flight; Results in input order. Rejects with the first
   *  error unless returnErrors (then errors take their place in the array). */
  inferMany(op, model, bodies, options = {}) {
    const { concurrency, returnErrors, ...rest } = options;
    const window = Math.max(1, concurrency || this.concurrency);
    const out = new Array(bodies.length);
    let next = 0;
    let live = 0;
    let firstError = null;
    return new Promise((resolve, reject) => {
      const launch = () => {
        while (next < bodies.length && live < window) {
          const i = next++;
          let req;
          try {
            req = this._submit(op, model, bodies[i], false, rest);
          } catch (e) {
            reject(e);
            return;
          }
          live++;
          const done = () => {
            live--;
            out[i] = req.error || req.result;
            if (req.error && !firstError) firstError = req.error;
            if (next < bodies.length) launch();
            else if (live === 0) {
              if (firstError && !returnErrors) reject(firstError);
              else resolve(out);
            }
          };
          if (req.done) done();
          else req.waiters.push(done);
        }
      };
      if (bodies.length === 0) resolve(out);
      else launch();
    });
  }

  /** Cancel an outstanding request: its promise rejects with Cancelled. */
  cancel(id) {
    if (this.pending.has(id) && this.sock) this._send({ t: "cancel", id });
  }

  // -- control -----------------------------------------------------------
  /** Send a control message, collect n matching replies; resend on a new socket after
   *  `liveness` of silence (control messages are idempotent); Unavailable after brokerTimeout. */
  _exchange(header, payload, match, n = 1, timeoutMs) {
    const run = () => this._exchangeNow(header, payload, match, n, timeoutMs);
    const p = this.controlChain.then(run, run);
    this.controlChain = p.catch(() => {});
    return p;
  }

  async _exchangeNow(header, payload, match, n, timeoutMs) {
    this._ensureSocket();
    this.controls++;
    try {
      const deadline = Date.now() + (timeoutMs || this.brokerTimeout);
      for (;;) {
        this.inbox.length = 0;
        this._send(header, payload);
        const got = [];
        const tryUntil = Math.min(deadline, Date.now() + this.liveness);
        while (Date.now() < tryUntil) {
          while (this.inbox.length) {
            const [h, p] = this.inbox.shift();
            if (!match(h)) continue;
            if (h.t === "error") throw E.errorFrom(h);
            got.push([h, p]);
            if (got.length === n) return got;
          }
          await new Promise((resolve) => {
            const t = setTimeout(resolve, Math.max(1, tryUntil - Date.now()));
            this.inboxWaiters.push(() => {
              clearTimeout(t);
              resolve();
            });
          });
        }
        if (Date.now() >= deadline) throw new E.Unavailable(`broker unreachable: no answer from ${this.endpoint}`);
        this._reconnect();
      }
    } finally {
      this.controls--;
    }
  }

  /** {broker, version, timeMs}; rejects with Unavailable if the broker is silent. */
  async ping(options = {}) {
    const [[h]] = await this._exchange({ t: "ping" }, null, (h) => h.t === "pong", 1, options.timeout);
    return { broker: h.broker || "", version: h.version || "", timeMs: h.time_ms || 0 };
  }

  /** The broker's status object (PROTOCOL.md 5.3). */
  async status(options = {}) {
    const [[, p]] = await this._exchange({ t: "status" }, null, (h) => h.t === "status", 1, options.timeout);
    const v = p && p.length ? decode(p) : {};
    return v && typeof v === "object" ? v : {};
  }
}

class Stream {
  constructor(client, start) {
    this.client = client;
    this.start = start;
    this.req = null;
    this.result = null;
    this.parts = [];
  }

  get text() {
    return this.parts.join("");
  }

  get id() {
    return this.req ? this.req.id : null;
  }

  async *[Symbol.asyncIterator]() {
    const req = (this.req = this.start());
    const c = this.client;
    try {
      for (;;) {
        while (req.pieces.length) {
          req.yielded = true;
          const piece = req.pieces.shift();
          this.parts.push(piece);
          yield piece;
        }
        if (req.done) break;
        await new Promise((resolve) => req.waiters.push(resolve));
      }
      if (req.error) throw req.error;
      this.result = req.result;
    } finally {
      if (!req.done) {
        c.cancel(req.id);
        c._finish(req, null, new E.Cancelled("stream abandoned", { requestId: req.id }));
      }
    }
  }
}

function isAck(batch, key, value) {
  return (h) => h.batch === batch && (h.t === "error" || (h.t === "batch.ack" &&
    (key === undefined || (h[key] !== undefined && (value === undefined || h[key] === value)))));
}

class Batches {
  constructor(client) {
    this.c = client;
  }

  /** Open a batch, add the items ({custom_id, body} or bare bodies: custom_id = index),
   *  close it; resolves to the batch id. */
  async submit(model, items, options = {}) {
    const batch = options.batchId || "js-" + crypto.randomBytes(8).toString("hex");
    const h = { t: "batch.open", batch, mode: options.mode || "auto", model, op: options.op || "chat" };
    for (const [k, o] of [["pool", "pool"], ["completion_window", "completionWindow"], ["priority", "priority"]]) {
      if (options[o] != null) h[k] = options[o];
    }
    await this.c._exchange(h, null, isAck(batch));
    const norm = items.map((it, i) =>
      it && typeof it === "object" && "custom_id" in it && "body" in it
        ? { custom_id: String(it.custom_id), body: it.body } : { custom_id: String(i), body: it });
    let seq = 0;
    for (let i = 0; i < norm.length; i += 1000) {
      seq++;
      await this.c._exchange({ t: "batch.add", batch, seq }, encode(norm.slice(i, i + 1000)), isAck(batch, "seq", seq));
    }
    await this.c._exchange({ t: "batch.close", batch }, null, isAck(batch, "count"));
    return batch;
  }

  async _get(batch, after) {
    const h = { t: "batch.get", batch };
    if (after != null) h.after = after;
    const replies = await this.c._exchange(h, null,
      (m) => m.batch === batch && ["batch.status", "batch.results", "error"].includes(m.t), 2);
    const st = replies.find(([m]) => m.t === "batch.status")[0];
    const [rh, p] = replies.find(([m]) => m.t === "batch.results");
    const raw = p && p.length ? decode(p) : [];
    return {
      status: batchStatusOf(st), results: Array.isArray(raw) ? raw.map(U.batchResultOf) : [],
      cursor: rh.cursor || 0, final: !!rh.final,
    };
  }

  async status(batch) {
    return (await this._get(batch, U.AFTER_END)).status;
  }

  /** Every finished result in input order (all of them once the batch is done). */
  async results(batch) {
    const out = [];
    let after = null;
    for (;;) {
      const pg = await this._get(batch, after);
      out.push(...pg.results);
      if (pg.final || pg.results.length === 0) return out;
      after = pg.cursor;
    }
  }

  async cancel(batch) {
    const [[h]] = await this.c._exchange({ t: "batch.cancel", batch }, null,
      (m) => m.batch === batch && (m.t === "batch.status" || m.t === "error"));
    return batchStatusOf(h);
  }

  /** Poll until the batch is in a terminal state; rejects with Timeout after options.timeout ms. */
  async wait(batch, options = {}) {
    const deadline = options.timeout != null ? Date.now() + options.timeout : null;
    const every = options.pollInterval ?? 500;
    for (;;) {
      const st = await this.status(batch);
      if (st.done) return st;
      if (deadline !== null && Date.now() >= deadline) throw new E.Timeout(`batch ${batch} still ${st.state}`);
      await new Promise((r) => setTimeout(r, every));
    }
  }

  /** Every batch the broker knows (the 1,000 most recent). */
  async list() {
    const c = this.c;
    const replies = [];
    await c._exchange({ t: "batch.get", batch: "" }, null, (m) => {
      if (m.t === "batch.status") replies.push(m);
      return m.t === "batch.ack" && m.batch === "";
    });
    return replies.map(batchStatusOf);
  }
}

const { batchStatusOf } = U;

module.exports = {
  Client, Stream, Batches, Result: U.Result, textOf: U.textOf, deltaOf: U.deltaOf, readCert: U.readCert,
  PROTOCOL_VERSION: U.PROTOCOL_VERSION, DEFAULT_ENDPOINT: U.DEFAULT_ENDPOINT, ...E,
};
