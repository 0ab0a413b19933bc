// ReportCompiler against real `vra-gateway demo --serve` processes: the routing matrix, the
// cloud budget, primary failures, and failures reported rather than dropped.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  FallbackReason,
  GatewayClient,
  InvalidArgument,
  Phase,
  ReportCompiler,
  Tier,
  Unavailable,
  loadOutline,
} from '../index.js';
import { CountingClient, OUTLINE, gatewaySuite, startGateway } from './helpers/gateway.js';

const P = 'PRIMARY';
const S = 'SECONDARY';
/** The routing matrix with hybrid on, for examples/outline.yaml, in record order. */
const MATRIX = [
  ['1', 'DRAFT', P, 'draft-reasoning-primary'],
  ['1', 'EXPAND', S, 'expand-secondary'],
  ['1', 'REFINE', P, 'refine-primary'],
  ['2', 'DRAFT', S, 'draft-template-secondary'],
  ['2', 'EXPAND', S, 'expand-secondary'],
  ['2', 'REFINE', P, 'refine-primary'],
  ['3', 'DRAFT', P, 'draft-reasoning-primary'],
  ['3', 'EXPAND', S, 'expand-secondary'],
  ['3', 'REFINE', P, 'refine-primary'],
  ['4', 'DRAFT', S, 'draft-template-secondary'],
  ['4', 'EXPAND', S, 'expand-secondary'],
  ['4', 'REFINE', P, 'refine-primary'],
  ['5', 'DRAFT', P, 'draft-reasoning-primary'],
  ['5', 'EXPAND', S, 'expand-secondary'],
  ['5', 'REFINE', P, 'refine-primary'],
  ['abstract', 'ABSTRACT', P, 'abstract-always-primary'],
];

/** Stops a gateway and asserts it exited 0 on SIGTERM. */
async function stopOk(gw) {
  if (!gw) return;
  const { code, signal } = await gw.stop();
  assert.equal(code, 0, `gateway exit status on SIGTERM (signal ${signal})\n${gw.stderr()}`);
}

gatewaySuite('ReportCompiler against demo --serve', () => {
  let gw;
  let client;
  let outline;
  before(async () => {
    [gw, outline] = await Promise.all([startGateway(), loadOutline(OUTLINE)]);
    client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
  });
  after(async () => {
    client?.close();
    await stopOk(gw);
  });

  test('examples/outline.yaml: 16 records routed exactly by the hybrid matrix, no failures', async () => {
    const progress = [];
    const report = await new ReportCompiler(client, outline, { onProgress: (r) => progress.push(r) }).run();
    assert.deepEqual(report.failures, []);
    assert.equal(report.records.length, 16);
    assert.deepEqual(report.records.map((r) => [r.sectionId, r.phase, r.tier, r.rule]), MATRIX);
    for (const r of report.records) {
      assert.equal(r.fallbackReason, FallbackReason.NONE);
      assert.equal(r.attempts, 1);
      assert.equal(r.provider, r.tier === Tier.PRIMARY ? 'openai' : 'local');
      assert.equal(r.model, r.tier === Tier.PRIMARY ? 'gpt-4o' : 'llama3:8b');
      assert.ok(r.outputTokens > 0 && r.inputTokens > 0 && r.latencyMs >= 0);
      assert.equal(r.streamed, false);
    }
    assert.equal(progress.length, 16);
    assert.match(report.reportId, /^hybrid-llm-routing-for-long-technical-reports-[0-9a-f]{8}$/);
    assert.equal(report.usage.reportId, report.reportId);
    assert.deepEqual(report.usage.budget, {
      cloudCallsUsed: 9,
      cloudCallsLimit: 15,
      exhausted: false,
      cloudCostUsedUsd: report.usage.cost.cloudUsd,
      cloudCostReservedUsd: 0,
      cloudCostLimitUsd: null,
    });
    assert.equal(report.usage.primaryCalls, 9);
    assert.equal(report.usage.secondaryCalls, 7);
    assert.equal(report.usage.fallbacks, 0);
    const headings = report.markdown.split('\n').filter((l) => l.startsWith('#'));
    assert.deepEqual(headings, [
      '# Hybrid LLM Routing for Long Technical Reports',
      '## Abstract',
      '## Introduction',
      '## Methodology',
      '## Analysis',
      '## Implementation',
      '## Conclusion',
    ]);
    assert.ok(!report.markdown.includes('section not compiled'));
  });

  test('stream: onDelta receives every call\'s text as it arrives; records say streamed', async () => {
    const deltas = new Map();
    const report = await new ReportCompiler(client, outline, {
      stream: true,
      onDelta: (sectionId, phase, text) => {
        const k = `${sectionId} ${phase}`;
        deltas.set(k, (deltas.get(k) ?? '') + text);
      },
    }).run();
    assert.deepEqual(report.failures, []);
    assert.equal(report.records.length, 16);
    assert.ok(report.records.every((r) => r.streamed));
    assert.deepEqual([...deltas.keys()].sort(), MATRIX.map(([s, p]) => `${s} ${p}`).sort());
    // The markdown holds the refined text, which arrived as the REFINE call's deltas.
    assert.ok(report.markdown.includes(`## Introduction\n\n${deltas.get('1 REFINE')}\n`));
    assert.ok(report.markdown.includes(`## Abstract\n\n${deltas.get('abstract ABSTRACT')}\n`));
  });

  test('a request the gateway rejects is not retried and is reported for every section', async () => {
    const counting = new CountingClient({ target: gw.target, timeoutMs: 10_000 });
    try {
      // `|` is refused in a report id (INVALID_ARGUMENT report_id).
      const report = await new ReportCompiler(counting, outline, { reportId: 'bad|id', retryDelayMs: 1 }).run();
      assert.equal(counting.calls, 6, 'one call per section plus the abstract: no retries');
      assert.equal(report.failures.length, 6);
      for (const f of report.failures) {
        assert.ok(f.error instanceof InvalidArgument);
        assert.equal(f.error.field, 'report_id');
      }
      assert.equal(report.records.length, 0);
    } finally {
      counting.close();
    }
  });
});

gatewaySuite('ReportCompiler: budget spent → COST_LIMIT (MAX_CLOUD_CALLS=2)', () => {
  let gw;
  let client;
  before(async () => {
    gw = await startGateway({ env: { MAX_CLOUD_CALLS: '2' } });
    client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
  });
  after(async () => {
    client?.close();
    await stopOk(gw);
  });

  test('the first two primary calls use the cloud, every later one falls back with COST_LIMIT', async () => {
    const report = await new ReportCompiler(client, await loadOutline(OUTLINE), { concurrency: 1 }).run();
    assert.deepEqual(report.failures, []);
    assert.equal(report.records.length, 16);
    const primaryRouted = report.records.filter((r) => MATRIX.find(([s, p]) => s === r.sectionId && p === r.phase)[2] === P);
    assert.equal(primaryRouted.length, 9);
    assert.deepEqual(
      primaryRouted.map((r) => [r.sectionId, r.phase, r.tier, r.fallbackReason]),
      primaryRouted.map((r, i) => [r.sectionId, r.phase, i < 2 ? P : S, i < 2 ? 'NONE' : 'COST_LIMIT']),
    );
    // The rule still names the matrix row; the fallback reason says why another tier answered.
    assert.deepEqual(report.records.map((r) => r.rule), MATRIX.map((m) => m[3]));
    assert.equal(report.records.at(-1).fallbackReason, FallbackReason.COST_LIMIT);
    assert.deepEqual(report.usage.budget, {
      cloudCallsUsed: 2,
      cloudCallsLimit: 2,
      exhausted: true,
      cloudCostUsedUsd: report.usage.cost.cloudUsd,
      cloudCostReservedUsd: 0,
      cloudCostLimitUsd: null,
    });
    assert.equal(report.usage.fallbacks, 7);
    const d = await client.resolveRoute({ reportId: report.reportId, phase: Phase.REFINE });
    assert.equal(d.route.tier, Tier.SECONDARY);
    assert.equal(d.route.fallbackReason, FallbackReason.COST_LIMIT);
  });
});

gatewaySuite('ReportCompiler: --fail-primary-every 2 → PRIMARY_ERROR', () => {
  let gw;
  let client;
  before(async () => {
    gw = await startGateway({ args: ['--fail-primary-every', '2'] });
    client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
  });
  after(async () => {
    client?.close();
    await stopOk(gw);
  });

  test('every second primary call falls back to the secondary with PRIMARY_ERROR', async () => {
    const outline = { title: 'One section', sections: [{ id: '1', title: 'Introduction', type: 'introduction' }] };
    const report = await new ReportCompiler(client, outline, { concurrency: 1 }).run();
    assert.deepEqual(report.failures, []);
    assert.deepEqual(
      report.records.map((r) => [r.sectionId, r.phase, r.tier, r.rule, r.fallbackReason]),
      [
        ['1', 'DRAFT', P, 'draft-reasoning-primary', 'NONE'], // primary call 1
        ['1', 'EXPAND', S, 'expand-secondary', 'NONE'],
        ['1', 'REFINE', S, 'refine-primary', 'PRIMARY_ERROR'], // primary call 2 fails
        ['abstract', 'ABSTRACT', P, 'abstract-always-primary', 'NONE'], // primary call 3
      ],
    );
    const failed = report.records[2];
    assert.equal(failed.attempts, 4, "3 primary attempts (all HTTP 500) + 1 secondary");
    assert.equal(report.usage.fallbacks, 1);
  });
});

gatewaySuite('ReportCompiler: unreachable gateway → retried once, then reported', () => {
  let target;
  before(async () => {
    const gw = await startGateway();
    target = gw.target;
    await stopOk(gw); // now nothing listens there
  });

  test('every call fails twice; each section and the abstract are reported with a visible placeholder', async () => {
    const client = new CountingClient({ target, timeoutMs: 5000 });
    try {
      const outline = await loadOutline(OUTLINE);
      const report = await new ReportCompiler(client, outline, { retryDelayMs: 10 }).run();
      assert.equal(client.calls, 12, '6 calls (5 DRAFTs, 1 ABSTRACT), each retried once');
      assert.deepEqual(
        report.failures.map((f) => [f.sectionId, f.phase]),
        [['1', 'DRAFT'], ['2', 'DRAFT'], ['3', 'DRAFT'], ['4', 'DRAFT'], ['5', 'DRAFT'], ['abstract', 'ABSTRACT']],
      );
      assert.ok(report.failures.every((f) => f.error instanceof Unavailable));
      assert.equal(report.records.length, 0);
      assert.equal(report.usage, null);
      const placeholders = report.markdown.match(/^> \*\*\[section not compiled — (DRAFT|ABSTRACT) failed: UNAVAILABLE: .*\]\*\*$/gm);
      assert.equal(placeholders?.length, 6, report.markdown);
      for (const s of outline.sections) assert.ok(report.markdown.includes(`## ${s.title}\n\n> **[section not compiled`));
    } finally {
      client.close();
    }
  });
});
