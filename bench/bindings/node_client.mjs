// Bindings benchmark client: N chat requests through the Node package.
//   node node_client.mjs ENDPOINT N CONCURRENCY
// Client.inferMany; exit 1 unless every request succeeded.
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const { Client, Result } = await import(path.join(here, "..", "..", "bindings", "node", "index.mjs"));
const [endpoint, n, conc] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const bodies = Array.from({ length: n }, (_, i) => ({
  messages: [{ role: "user", content: `Question ${i}: what is ${i} times ${i + 1}?` }], max_tokens: 16,
}));
const c = new Client(endpoint, { timeout: 300000 });
const results = await c.inferMany("chat", "sim-model", bodies, { concurrency: conc, returnErrors: true });
const ok = results.filter((r) => r instanceof Result && r.text).length;
console.error(`ok ${ok} failed ${n - ok}`);
c.close();
process.exitCode = ok === n ? 0 : 1;
