// The gateway's response cache through the SDK, against a real `vra-gateway demo --serve` with
// VRA_CACHE=memory: a rebuilt report costs nothing; the per-call cache modes; a streamed hit.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';

import { CacheMode, CacheStatus, GatewayClient, NotCached, ReportCompiler, loadOutline } from '../index.js';
import { OUTLINE, gatewaySuite, startGateway } from './helpers/gateway.js';

const id = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`;

gatewaySuite('the response cache (VRA_CACHE=memory)', () => {
  let gw;
  let client;
  let outline;
  before(async () => {
    [gw, outline] = await Promise.all([startGateway({ env: { VRA_CACHE: 'memory' } }), loadOutline(OUTLINE)]);
    client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
  });
  after(async () => {
    client?.close();
    const { code } = await gw.stop();
    assert.equal(code, 0, gw.stderr());
  });

  test('a rebuilt report is answered from the cache and spends nothing', async () => {
    const [firstId, secondId] = [id('rebuild'), id('rebuild')];
    const first = await new ReportCompiler(client, outline, { reportId: firstId }).run();
    const second = await new ReportCompiler(client, outline, { reportId: secondId }).run();
    assert.equal(second.records.length, 16);
    assert.ok(first.records.every((r) => !r.cached));
    assert.ok(second.records.every((r) => r.cached && r.attempts === 0));
    assert.equal(second.markdown.replaceAll(secondId, firstId), first.markdown);
    assert.equal(second.usage.cachedCalls, 16);
    assert.equal(second.usage.primaryCalls + second.usage.secondaryCalls, 0);
    assert.equal(second.usage.budget.cloudCallsUsed, 0);
    assert.ok(first.usage.cost.totalUsd > 0);
    assert.ok(Math.abs(second.usage.cacheSavedUsd - first.usage.cost.totalUsd) < 1e-9);
    assert.equal(
      second.usage.phases.reduce((n, p) => n + p.cachedCalls, 0),
      16,
    );
  });

  test('the cache modes steer each call; a stream replays a hit', async () => {
    const base = { reportId: id('modes'), sectionId: '1', phase: 'REFINE', sectionType: 'ANALYSIS' };
    await assert.rejects(
      client.generate({ ...base, prompt: 'Never asked.', cache: CacheMode.ONLY_IF_CACHED }),
      (e) => e instanceof NotCached && e.code === 'NOT_FOUND' && e.kind === 'not_cached',
    );
    const first = await client.generate({ ...base, prompt: 'Asked once.' });
    assert.equal(first.cacheStatus, CacheStatus.MISS);
    const hit = await client.generate({ ...base, prompt: 'Asked once.', cache: 'only_if_cached' });
    assert.equal(hit.cacheStatus, CacheStatus.HIT);
    assert.ok(hit.usage.cached);
    assert.equal(hit.text, first.text);
    assert.equal(hit.costUsd, 0);
    const fresh = await client.generate({ ...base, prompt: 'Asked once.', cache: 'NO_CACHE' });
    assert.equal(fresh.cacheStatus, CacheStatus.BYPASS);
    const zero = await client.generate({ ...base, prompt: 'Asked once.', maxAgeSecs: 0 });
    assert.equal(zero.cacheStatus, CacheStatus.BYPASS);
    let text = '';
    let result;
    for await (const event of client.generateStream({ ...base, prompt: 'Asked once.' })) {
      if (event.type === 'delta') text += event.text;
      else result = event.result;
    }
    assert.equal(text, first.text);
    assert.equal(result.cacheStatus, CacheStatus.HIT);
    await assert.rejects(client.generate({ ...base, prompt: 'x', cache: 'SOMETIMES' }), /cache: must be one of/);
  });
});
