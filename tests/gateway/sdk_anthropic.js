// The official `@anthropic-ai/sdk` npm package, unchanged, against
// llmq-gateway: messages (plain and streaming, events in Anthropic's order)
// and a message batch (create, poll, results). Env: GW_URL, GW_KEY, GW_MODEL.
'use strict';
const { check, ok, poll, run } = require('./sdk_kit'); // first: File for the SDK
const Anthropic = require('@anthropic-ai/sdk');

const model = process.env.GW_MODEL || 'sim-model';
const client = new Anthropic({ baseURL: process.env.GW_URL, apiKey: process.env.GW_KEY, maxRetries: 0 });

async function messages() {
  if (client.models && client.models.list) {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    check(ids.includes(model), 'models.list names ' + model);
    ok('models');
  }
  const msg = await client.messages.create({ model, max_tokens: 8, system: 'be brief', messages: [{ role: 'user', content: 'hello' }] });
  check(msg.type === 'message' && msg.role === 'assistant', 'message object');
  check(msg.content[0].type === 'text' && msg.content[0].text.length > 0, 'message text');
  check(msg.usage.output_tokens > 0 && msg.stop_reason, 'usage and stop_reason');
  ok('messages');
  const stream = await client.messages.create({ model, max_tokens: 6, stream: true, messages: [{ role: 'user', content: 'stream' }] });
  const order = [];
  let text = '';
  for await (const ev of stream) {
    if (order[order.length - 1] !== ev.type) order.push(ev.type);
    if (ev.type === 'content_block_delta') text += ev.delta.text;
  }
  // The SDK swallows `ping` events; the raw order (with ping) is checked
  // over plain HTTP in test_gateway_http.py.
  const want = ['message_start', 'content_block_start', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop'];
  check(JSON.stringify(order.filter((t) => t !== 'ping')) === JSON.stringify(want), 'event order ' + order.join(','));
  check(text.length > 0, 'streamed text');
  ok('messages stream');
  const helper = client.messages.stream({ model, max_tokens: 5, messages: [{ role: 'user', content: 'helper' }] });
  const final = await helper.finalMessage();
  check(final.content[0].text.length > 0, 'stream helper final message');
  ok('messages.stream helper');
  try {
    await client.messages.create({ model: 'no-such-model', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] });
    check(false, '404 expected');
  } catch (e) {
    check(e.status === 404 && e.error && e.error.type === 'error', 'NotFoundError in Anthropic shape');
  }
  ok('404 not_found_error');
}

async function batch() {
  const requests = ['x', 'y', 'z'].map((id) => ({ custom_id: id, params: { model, max_tokens: 5, messages: [{ role: 'user', content: 'batch ' + id }] } }));
  const b = await client.messages.batches.create({ requests });
  check(b.type === 'message_batch' && b.processing_status === 'in_progress', 'batch created');
  const ended = await poll('batch ended', async () => {
    const r = await client.messages.batches.retrieve(b.id);
    return r.processing_status === 'ended' ? r : null;
  });
  check(ended.request_counts.succeeded === 3, 'succeeded 3');
  const seen = [];
  for await (const r of await client.messages.batches.results(b.id)) {
    check(r.result.type === 'succeeded' && r.result.message.content[0].text.length > 0, 'result message');
    seen.push(r.custom_id);
  }
  check(seen.sort().join(',') === 'x,y,z', 'results custom_ids');
  ok('message batch');
}

run('anthropic', messages, batch);
