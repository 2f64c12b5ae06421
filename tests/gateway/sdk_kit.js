// The small kit of the SDK scripts (sdk_openai.js, sdk_anthropic.js):
// checks, an ok line per case, a poll with a deadline, and the runner.
// Required before the SDK: Debian bookworm's Node.js 18 has File only in
// node:buffer, and the SDKs' uploads want the global (newer Node has it).
'use strict';
if (typeof globalThis.File === 'undefined') globalThis.File = require('node:buffer').File;

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
}

function ok(name) { console.log('ok ' + name); }

// fn() until it returns a true value (returned) or timeoutMs pass (throws).
async function poll(what, fn, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 100)); // poll period, not a wait
  }
}

// Run the async steps in order; exit 1 with the error on the first failure.
function run(name, ...steps) {
  (async () => {
    for (const step of steps) await step();
    console.log(name + ' sdk: all passed');
  })().catch((e) => { console.error('FAIL', e); process.exit(1); });
}

module.exports = { check, ok, poll, run };
