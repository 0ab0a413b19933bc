// GatewayClient against a real `vra-gateway demo --serve`: every RPC, streaming, gateway errors.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  DEFAULT_TARGET,
  DeadlineExceeded,
  FallbackReason,
  GatewayClient,
  GatewayError,
  InvalidArgument,
  Phase,
  SectionType,
  Tier,
  Unavailable,
} from '../index.js';
import { closedPort, gatewaySuite, startGateway } from './helpers/gateway.js';

gatewaySuite('GatewayClient against demo --serve', () => {
  /** @type {Awaited<ReturnType<typeof startGateway>>} */
  let gw;
  /** @type {GatewayClient} */
  let client;
  let n = 0;
  const rid = (/** @type {string} */ name) => `node-${name}-${process.pid}-${n++}`;

  before(async () => {
    gw = await startGateway();
    client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
  });
  after(async () => {
    client?.close();
    if (gw) {
      const { code, signal } = await gw.stop();
      assert.equal(code, 0, `gateway exit status on SIGTERM (signal ${signal})\n${gw.stderr()}`);
    }
  });

  test('generate returns text, route, usage, budget, attempts as plain values', async () => {
    const reportId = rid('gen');
    const r = await client.generate({
      reportId,
      sectionId: '1',
      phase: Phase.DRAFT,
      sectionType: SectionType.INTRODUCTION,
      prompt: 'Write the introduction.',
      maxTokens: 64,
      temperature: 0.2,
    });
    assert.ok(r.text.length > 0);
    assert.deepEqual(r.route, {
      tier: Tier.PRIMARY,
      provider: 'openai',
      model: 'gpt-4o',
      cloud: true,
      rule: 'draft-reasoning-primary',
      fallbackReason: FallbackReason.NONE,
    });
    assert.ok(r.usage.inputTokens > 0 && r.usage.outputTokens > 0);
    assert.deepEqual(r.budget, {
      cloudCallsUsed: 1,
      cloudCallsLimit: 15,
      exhausted: false,
      cloudCostUsedUsd: r.costUsd,
      cloudCostReservedUsd: 0,
      cloudCostLimitUsd: null,
    });
    assert.ok(r.costUsd > 0 && r.usage.estimated === false);
    assert.equal(r.attempts, 1);
    assert.equal(r.finishReason, 'stop');
    assert.equal(Object.getPrototypeOf(r), Object.prototype, 'a plain object, not a protobuf message');
  });

  test('a conversation instead of a prompt, with topP and seed', async () => {
    const reportId = rid('conv');
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Draft the analysis.' },
      { role: 'assistant', content: '1. Data 2. Findings' },
      { role: 'user', content: 'Refine it.' },
    ];
    const r = await client.generate({ reportId, sectionId: '3', phase: Phase.REFINE, prompt: '', messages, topP: 0.9, seed: 7 });
    assert.ok(r.text.length > 0);
    assert.equal(r.route.tier, Tier.PRIMARY);
    await assert.rejects(
      client.generate({ reportId, sectionId: '3', phase: Phase.REFINE, prompt: '', messages: [{ role: 'system', content: 'x' }] }),
      (e) => e instanceof InvalidArgument && e.field === 'messages',
    );
    await assert.rejects(
      client.generate({ reportId, sectionId: '3', phase: Phase.REFINE, prompt: '', messages: [/** @type {any} */ ({ role: 'tool', content: 'x' })] }),
      (e) => e instanceof InvalidArgument && e.field === 'messages',
    );
  });

  test('enum inputs accept any case and full proto names', async () => {
    const r = await client.generate({
      reportId: rid('case'),
      sectionId: '2',
      phase: 'draft',
      sectionType: 'SECTION_TYPE_METHODOLOGY',
      prompt: 'Describe the method.',
    });
    assert.equal(r.route.tier, Tier.SECONDARY);
    assert.equal(r.route.rule, 'draft-template-secondary');
    assert.equal(r.route.cloud, false);
  });

  test('generateStream yields deltas, then one result whose text is their concatenation', async () => {
    const reportId = rid('stream');
    /** @type {any[]} */
    const events = [];
    for await (const ev of client.generateStream({
      reportId,
      sectionId: '3',
      phase: Phase.REFINE,
      sectionType: SectionType.ANALYSIS,
      prompt: 'Refine the analysis.',
    })) {
      events.push(ev);
    }
    const deltas = events.filter((e) => e.type === 'delta');
    assert.ok(deltas.length >= 2, `several deltas, got ${deltas.length}`);
    assert.ok(deltas.every((d) => typeof d.text === 'string' && d.text.length > 0));
    const last = events.at(-1);
    assert.equal(last.type, 'result');
    assert.equal(events.filter((e) => e.type === 'result').length, 1);
    assert.equal(last.result.text, deltas.map((d) => d.text).join(''));
    assert.equal(last.result.route.rule, 'refine-primary');
    assert.equal(last.result.route.tier, Tier.PRIMARY);
    assert.equal(last.result.budget.cloudCallsUsed, 1);
    assert.ok(last.result.usage.outputTokens > 0);
  });

  test('breaking out of a stream cancels it without error', async () => {
    let got = 0;
    for await (const ev of client.generateStream({ reportId: rid('brk'), sectionId: '1', phase: Phase.EXPAND, prompt: 'x' })) {
      assert.equal(ev.type, 'delta');
      got++;
      break;
    }
    assert.equal(got, 1);
  });

  test('resolveRoute answers the route without spending budget', async () => {
    const reportId = rid('resolve');
    const d = await client.resolveRoute({ reportId, phase: Phase.ABSTRACT, sectionType: SectionType.OTHER });
    assert.equal(d.route.tier, Tier.PRIMARY);
    assert.equal(d.route.rule, 'abstract-always-primary');
    assert.equal(d.route.provider, 'openai');
    assert.equal(d.budget.cloudCallsUsed, 0);
    assert.equal(d.budget.cloudCallsLimit, 15);
    assert.equal(d.clientQuota, null);
    const e = await client.resolveRoute({ reportId, phase: Phase.EXPAND });
    assert.equal(e.route.tier, Tier.SECONDARY);
    assert.equal(e.route.rule, 'expand-secondary');
    const u = await client.reportUsage(reportId);
    assert.equal(u.budget.cloudCallsUsed, 0);
    assert.equal(u.primaryCalls + u.secondaryCalls, 0);
  });

  test('reportUsage counts the calls of a report; an unknown report has zeros', async () => {
    const reportId = rid('usage');
    await client.generate({ reportId, sectionId: '1', phase: Phase.DRAFT, sectionType: SectionType.CONCLUSION, prompt: 'a' });
    await client.generate({ reportId, sectionId: '1', phase: Phase.EXPAND, sectionType: SectionType.CONCLUSION, prompt: 'b' });
    const u = await client.reportUsage(reportId);
    assert.equal(u.reportId, reportId);
    assert.equal(u.primaryCalls, 1);
    assert.equal(u.secondaryCalls, 1);
    assert.equal(u.fallbacks, 0);
    assert.deepEqual(u.budget, {
      cloudCallsUsed: 1,
      cloudCallsLimit: 15,
      exhausted: false,
      cloudCostUsedUsd: u.cost.cloudUsd,
      cloudCostReservedUsd: 0,
      cloudCostLimitUsd: null,
    });
    assert.ok(u.cloudUsage.outputTokens > 0 && u.localUsage.outputTokens > 0);
    const none = await client.reportUsage(rid('unknown'));
    assert.equal(none.primaryCalls + none.secondaryCalls + none.budget.cloudCallsUsed, 0);
  });

  test('InvalidArgument names the field (from the vra-error-field trailer)', async () => {
    const err = await client.generate({ reportId: '', sectionId: '1', phase: Phase.DRAFT, prompt: 'x' }).then(
      () => assert.fail('expected a rejection'),
      (e) => e,
    );
    assert.ok(err instanceof InvalidArgument && err instanceof GatewayError);
    assert.equal(err.code, 'INVALID_ARGUMENT');
    assert.equal(err.field, 'report_id');
    assert.equal(err.kind, 'invalid_argument');
    assert.match(err.message, /^report_id: /);

    const noPhase = await client.resolveRoute({ reportId: rid('x'), phase: undefined }).catch((e) => e);
    assert.ok(noPhase instanceof InvalidArgument);
    assert.equal(noPhase.field, 'phase');

    const streamErr = await (async () => {
      for await (const _ of client.generateStream({ reportId: rid('s'), sectionId: '1', phase: Phase.DRAFT, prompt: '' }));
    })().catch((e) => e);
    assert.ok(streamErr instanceof InvalidArgument, 'stream errors are typed too');
    assert.equal(streamErr.field, 'prompt');
  });

  test('an unknown enum name is rejected client-side as InvalidArgument', async () => {
    const err = await client.generate({ reportId: rid('e'), sectionId: '1', phase: 'SUMMARY', prompt: 'x' }).catch((e) => e);
    assert.ok(err instanceof InvalidArgument);
    assert.equal(err.field, 'phase');
    const err2 = await client.resolveRoute({ reportId: rid('e'), phase: 'DRAFT', sectionType: 'appendix' }).catch((e) => e);
    assert.ok(err2 instanceof InvalidArgument);
    assert.equal(err2.field, 'section_type');
  });

  test('DeadlineExceeded with a 1 ms deadline', async () => {
    const err = await client
      .generate({ reportId: rid('dl'), sectionId: '1', phase: Phase.DRAFT, prompt: 'x', timeoutMs: 1 })
      .catch((e) => e);
    assert.ok(err instanceof DeadlineExceeded, `got ${err?.name}: ${err?.message}`);
    assert.equal(err.code, 'DEADLINE_EXCEEDED');
    const short = new GatewayClient({ target: gw.target, timeoutMs: 1 });
    try {
      const e2 = await short.reportUsage(rid('dl')).catch((e) => e);
      assert.ok(e2 instanceof DeadlineExceeded, 'the client-wide timeoutMs applies too');
    } finally {
      short.close();
    }
  });

  test('an aborted signal cancels the call', async () => {
    const ac = new AbortController();
    ac.abort();
    const err = await client.generate({ reportId: rid('ab'), sectionId: '1', phase: Phase.DRAFT, prompt: 'x', signal: ac.signal }).catch((e) => e);
    assert.ok(err instanceof GatewayError);
    assert.equal(err.code, 'CANCELLED');
  });

  test('a string first argument is the target: new GatewayClient(\'host:port\'[, options])', async () => {
    assert.notEqual(gw.target, DEFAULT_TARGET, 'the demo gateway listens on a non-default port');
    const bare = new GatewayClient(gw.target);
    const withOpts = new GatewayClient(gw.target, { timeoutMs: 10_000 });
    try {
      assert.equal(bare.target, gw.target);
      assert.equal(withOpts.target, gw.target);
      assert.equal(withOpts.timeoutMs, 10_000, 'the options after the string still apply');
      for (const c of [bare, withOpts]) {
        const d = await c.resolveRoute({ reportId: rid('str'), phase: Phase.REFINE, timeoutMs: 10_000 });
        assert.equal(d.route.rule, 'refine-primary');
      }
    } finally {
      bare.close();
      withOpts.close();
    }
  });

  test('Unavailable when nothing listens on the target', async () => {
    const port = await closedPort();
    const dead = new GatewayClient({ target: `127.0.0.1:${port}`, timeoutMs: 5000 });
    try {
      const err = await dead.generate({ reportId: 'r', sectionId: '1', phase: Phase.DRAFT, prompt: 'x' }).catch((e) => e);
      assert.ok(err instanceof Unavailable, `got ${err?.name}: ${err?.message}`);
      assert.equal(err.code, 'UNAVAILABLE');
      const err2 = await (async () => {
        for await (const _ of dead.generateStream({ reportId: 'r', sectionId: '1', phase: Phase.DRAFT, prompt: 'x' }));
      })().catch((e) => e);
      assert.ok(err2 instanceof Unavailable);
    } finally {
      dead.close();
    }
  });
});
