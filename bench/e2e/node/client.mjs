// Baseline (c) of the end-to-end benchmark: the official `openai` SDK with
// `p-limit`, the way its README suggests bounding concurrency.
//
//   node client.mjs IN.jsonl OUT.jsonl BASE_URL CONCURRENCY
//
// Every OpenAI Batch API input line is sent with
// client.chat.completions.create(body), at most CONCURRENCY at once, and
// written as an OpenAI Batch output line as it completes. SDK defaults
// otherwise (its own retries: none are needed, llmq-sim injects no faults).
import { readFileSync, openSync, writeSync, closeSync } from 'node:fs';
import OpenAI from 'openai';
import pLimit from 'p-limit';

const [src, dst, baseURL, conc] = process.argv.slice(2);
const client = new OpenAI({ apiKey: 'bench-key', baseURL, timeout: 300000 });
const limit = pLimit(Number(conc));
const items = readFileSync(src, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
const out = openSync(dst, 'w');
let ok = 0, failed = 0;

await Promise.all(items.map((item, n) => limit(async () => {
  let line;
  try {
    const body = await client.chat.completions.create(item.body);
    ok++;
    line = { id: `node-${n}`, custom_id: item.custom_id, response: { status_code: 200, body }, error: null };
  } catch (e) {
    failed++;
    line = { id: `node-${n}`, custom_id: item.custom_id, response: { status_code: e.status ?? null, body: null },
             error: { message: String(e.message) } };
  }
  writeSync(out, JSON.stringify(line) + '\n');
})));
closeSync(out);
console.error(`ok ${ok} failed ${failed}`);
process.exit(failed ? 1 : 0);
