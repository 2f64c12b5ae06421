// Shared helpers of the llmq-client tests. Live tests need a cluster:
// LLMQ_TEST_ENDPOINT, LLMQ_TEST_CONTROL (POST /restart-broker), LLMQ_TEST_SIM;
// tests/client/test_node.py starts one. Without them they are skipped.
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ENDPOINT = process.env.LLMQ_TEST_ENDPOINT || "";
export const CONTROL = process.env.LLMQ_TEST_CONTROL || "";
export const SIM = process.env.LLMQ_TEST_SIM || "";
export const LIVE = ENDPOINT ? {} : { skip: "no cluster (LLMQ_TEST_ENDPOINT unset)" };
export const CASES = JSON.parse(fs.readFileSync(
  process.env.LLMQ_CONFORMANCE || path.join(here, "..", "..", "conformance.json"), "utf8"));
export const MODEL = CASES.model;

/** llmq-sim's answer prefix for one user message (sim/README.md). */
export function simHash(text) {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(`${MODEL}\nuser:${text}\n`)) {
    h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return "sim-" + h.toString(16).padStart(16, "0");
}

export const body = (text) => ({ messages: [{ role: "user", content: text }], max_tokens: 8 });

export async function deadEndpoint() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const port = srv.address().port;
  await new Promise((r) => srv.close(r));
  return `tcp://127.0.0.1:${port}`;
}

async function simInFlight() {
  const r = await fetch(SIM + "/_stats");
  return (await r.json()).in_flight || 0;
}

/** Poll (bounded) until pred(in-flight count at the sim). */
export async function waitSim(pred, what, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (pred(await simInFlight())) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("timed out waiting for " + what);
}

export async function restartBroker() {
  const r = await fetch(CONTROL + "/restart-broker", { method: "POST" });
  if (r.status !== 200) throw new Error("restart failed: " + r.status);
}
