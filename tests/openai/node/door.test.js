// The official `openai` npm package against the gateway's OpenAI-compatible door: a real
// `vra-gateway demo --serve` ($VRA_GATEWAY_BIN, default <repo>/target/debug/vra-gateway) in front
// of simulated upstreams that speak the real OpenAI and Ollama wire formats.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import OpenAI from 'openai';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const binary = process.env.VRA_GATEWAY_BIN || join(repo, 'target', 'debug', 'vra-gateway');
const required = !['', '0', 'false'].includes(process.env.VRA_REQUIRE_SDK ?? '');
const missing = !existsSync(binary);
if (missing && required) throw new Error(`no gateway binary at ${binary}`);

let sandbox;
let client;

before(async () => {
  if (missing) return;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VRA_')));
  Object.assign(env, { VRA_GATEWAY_ADDR: '127.0.0.1:0', VRA_HTTP_ADDR: '127.0.0.1:0', MAX_CLOUD_CALLS: '2' });
  sandbox = spawn(binary, ['demo', '--serve'], { env, stdio: ['ignore', 'pipe', 'ignore'] });
  const baseURL = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the sandbox did not print its door')), 30_000);
    createInterface({ input: sandbox.stdout }).on('line', (line) => {
      const found = /OpenAI-compatible door on (\S+)/.exec(line);
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    });
    sandbox.on('exit', (code) => reject(new Error(`the sandbox exited with ${code}`)));
  });
  client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  if (!sandbox) return;
  const exited = new Promise((resolve) => sandbox.on('exit', resolve));
  sandbox.kill('SIGTERM');
  assert.equal(await exited, 0);
});

const report = (id, phase, section = 'OTHER') => ({
  'x-vra-report-id': id,
  'x-vra-section-id': '1',
  'x-vra-phase': phase,
  'x-vra-section-type': section,
});
const messages = [
  { role: 'system', content: 'You write technical reports.' },
  { role: 'user', content: 'Write the section.' },
];
const opts = { skip: missing && `no gateway binary at ${binary}` };

test('a unary call is routed by the matrix and says how', opts, async () => {
  const { data, response } = await client.chat.completions
    .create({ model: 'vra-auto', messages }, { headers: report('node-1', 'REFINE', 'ANALYSIS') })
    .withResponse();
  assert.equal(data.model, 'gpt-4o');
  assert.ok(data.choices[0].message.content);
  assert.equal(response.headers.get('x-vra-tier'), 'PRIMARY');
  assert.equal(response.headers.get('x-vra-rule'), 'refine-primary');
  assert.equal(response.headers.get('x-request-id'), data.id);
});

test('metadata carries the report for frameworks without headers', opts, async () => {
  const { response } = await client.chat.completions
    .create({
      model: 'vra-auto',
      messages,
      metadata: { vra_report_id: 'node-meta', vra_phase: 'EXPAND', vra_section_type: 'ANALYSIS' },
    })
    .withResponse();
  assert.equal(response.headers.get('x-vra-rule'), 'expand-secondary');
  assert.equal(response.headers.get('x-vra-tier'), 'SECONDARY');
});

test('a stream yields chunks, then the usage', opts, async () => {
  const stream = await client.chat.completions.create(
    { model: 'vra-auto', messages, stream: true, stream_options: { include_usage: true } },
    { headers: report('node-stream', 'DRAFT', 'INTRODUCTION') },
  );
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    usage = chunk.usage ?? usage;
  }
  assert.ok(text.length > 0);
  assert.ok(usage.completion_tokens > 0);
});

test('the budget is exact: the third primary call of a report falls back', opts, async () => {
  const reasons = [];
  for (let i = 0; i < 3; i++) {
    const { response } = await client.chat.completions
      .create({ model: 'vra-auto', messages }, { headers: report('node-budget', 'REFINE') })
      .withResponse();
    reasons.push(response.headers.get('x-vra-fallback-reason'));
  }
  assert.deepEqual(reasons, ['none', 'none', 'COST_LIMIT']);
});

test('a pinned model, the model list, and refusals name the field', opts, async () => {
  const { response } = await client.chat.completions
    .create({ model: 'llama3:8b', messages }, { headers: report('node-pin', 'REFINE') })
    .withResponse();
  assert.equal(response.headers.get('x-vra-rule'), 'pinned');
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.equal(ids[0], 'vra-auto');
  await assert.rejects(
    client.chat.completions.create({ model: 'vra-auto', messages, n: 2 }, { headers: report('node-bad', 'DRAFT') }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'n',
  );
});

test('a conversation with earlier turns', opts, async () => {
  const data = await client.chat.completions.create(
    {
      model: 'vra-auto',
      messages: [
        { role: 'system', content: 'You write technical reports.' },
        { role: 'user', content: 'Draft the analysis.' },
        { role: 'assistant', content: '1. Data 2. Findings' },
        { role: 'user', content: [{ type: 'text', text: 'Expand point 2.' }] },
      ],
    },
    { headers: report('node-conv', 'EXPAND', 'ANALYSIS') },
  );
  assert.ok(data.choices[0].message.content);
});
