// The official `openai` npm package, unchanged, against llmq-gateway:
// models, chat (plain and streaming), completions, embeddings (float and the
// SDK's default base64), a 404, and the whole Files + Batches cycle (upload,
// create, poll, download output and error files, list, cancel, delete).
// Env: GW_URL (http://host:port), GW_KEY, GW_MODEL. Exit 0 when all pass.
'use strict';
const { check, ok, poll, run } = require('./sdk_kit'); // first: File for the SDK
const OpenAI = require('openai');
const { toFile } = require('openai');

const model = process.env.GW_MODEL || 'sim-model';
const client = new OpenAI({ baseURL: process.env.GW_URL + '/v1', apiKey: process.env.GW_KEY, maxRetries: 0 });

async function inference() {
  const models = await client.models.list();
  check(models.data.some((m) => m.id === model), 'models lists ' + model);
  ok('models');
  const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8 });
  check(typeof chat.choices[0].message.content === 'string' && chat.choices[0].message.content.length > 0, 'chat content');
  check(chat.usage.total_tokens > 0, 'chat usage');
  ok('chat');
  const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'stream' }], max_tokens: 6, stream: true, stream_options: { include_usage: true } });
  let text = '', usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.choices.length) text += chunk.choices[0].delta.content || '';
    if (chunk.usage) usage = chunk.usage;
  }
  check(chunks >= 2 && text.length > 0, 'stream text');
  check(usage && usage.completion_tokens > 0, 'stream usage chunk');
  ok('chat stream');
  const nousage = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'stream' }], max_tokens: 3, stream: true });
  for await (const chunk of nousage) check(!chunk.usage || chunk.choices.length, 'no usage chunk unless asked');
  ok('chat stream without usage');
  const comp = await client.completions.create({ model, prompt: 'Say hi', max_tokens: 5 });
  check(typeof comp.choices[0].text === 'string' && comp.choices[0].text.length > 0, 'completion text');
  ok('completions');
  const ef = await client.embeddings.create({ model, input: ['a', 'b'], encoding_format: 'float' });
  const eb = await client.embeddings.create({ model, input: ['a', 'b'] }); // SDK default: base64
  check(ef.data.length === 2 && Array.isArray(ef.data[0].embedding), 'float embeddings');
  check(Array.isArray(eb.data[0].embedding) && eb.data[0].embedding.length === ef.data[0].embedding.length, 'base64 decoded');
  check(Math.abs(eb.data[0].embedding[0] - ef.data[0].embedding[0]) < 1e-5, 'base64 matches float');
  ok('embeddings float + base64');
  try {
    await client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] });
    check(false, '404 expected');
  } catch (e) {
    check(e.status === 404 && e.code === 'model_not_found', 'NotFoundError model_not_found, got ' + e.status + ' ' + e.code);
  }
  ok('404 model_not_found');
}

function line(id, content) {
  return JSON.stringify({ custom_id: id, method: 'POST', url: '/v1/chat/completions', body: { model, messages: [{ role: 'user', content }], max_tokens: 5 } });
}

async function batches() {
  const lines = [line('a', 'one'), line('b', 'two'), line('c', 'three'), line('bad', 'refuse [[sim:fail=400]]')];
  const file = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n') + '\n'), 'in.jsonl'), purpose: 'batch' });
  check(file.id && file.purpose === 'batch' && file.bytes > 0, 'file object');
  check((await client.files.retrieve(file.id)).id === file.id, 'files.retrieve');
  ok('files upload');
  const batch = await client.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h', metadata: { run: 'sdk' } });
  check(batch.id.startsWith('batch_') && batch.request_counts.total === 4, 'batch created');
  const done = await poll('batch completed', async () => {
    const b = await client.batches.retrieve(batch.id);
    return b.status === 'completed' ? b : null;
  });
  check(done.request_counts.completed === 3 && done.request_counts.failed === 1, 'request_counts ' + JSON.stringify(done.request_counts));
  check(done.metadata && done.metadata.run === 'sdk', 'metadata kept');
  const out = (await (await client.files.content(done.output_file_id)).text()).trim().split('\n').map(JSON.parse);
  check(out.length === 3 && out.every((l) => l.response.status_code === 200 && l.response.body.choices[0].message.content), 'output file');
  check(out.map((l) => l.custom_id).sort().join(',') === 'a,b,c', 'output custom_ids');
  const errs = (await (await client.files.content(done.error_file_id)).text()).trim().split('\n').map(JSON.parse);
  check(errs.length === 1 && errs[0].custom_id === 'bad' && errs[0].response.status_code === 400, 'error file');
  ok('batch cycle');
  const page = await client.batches.list({ limit: 10 });
  check(page.data.some((b) => b.id === batch.id), 'batches.list');
  ok('batches list');
  // Cancel: slow items, cancel at once, the batch ends cancelled.
  const slow = Array.from({ length: 20 }, (_, i) => line('s' + i, 'slow ' + i + ' [[sim:delay_ms=2000]]'));
  const f2 = await client.files.create({ file: await toFile(Buffer.from(slow.join('\n')), 'slow.jsonl'), purpose: 'batch' });
  const b2 = await client.batches.create({ input_file_id: f2.id, endpoint: '/v1/chat/completions', completion_window: '24h' });
  const c2 = await client.batches.cancel(b2.id);
  check(c2.status === 'cancelling' || c2.status === 'cancelled', 'cancel status ' + c2.status);
  await poll('batch cancelled', async () => (await client.batches.retrieve(b2.id)).status === 'cancelled');
  ok('batch cancel');
  const del = client.files.delete ? await client.files.delete(file.id) : await client.files.del(file.id);
  check(del.deleted === true, 'file deleted');
  try {
    await client.files.retrieve(file.id);
    check(false, 'deleted file still there');
  } catch (e) {
    check(e.status === 404, 'deleted file 404');
  }
  ok('files delete');
}

run('openai', inference, batches);
