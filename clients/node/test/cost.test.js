// Cost accounting: per-call cost, the report's cost and savings, phases, the dollar cap.
//
// The sandbox's simulated upstreams report usage; gpt-4o costs $2.50 / $10.00 per million input /
// output tokens, the local model is free. The gateway prices in exact nano-dollars (rounded up),
// and these prices give whole nano-dollars per token, so the cost is exact up to float rounding.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { FallbackReason, GatewayClient, Phase, ReportCompiler, Tier, loadOutline } from '../index.js';
import { serviceConstructor } from '../src/client.js';
import { optionalNumber, reportUsageFromWire, resultFromWire } from '../src/types.js';
import { OUTLINE, gatewaySuite, startGateway } from './helpers/gateway.js';

const INPUT_USD = 2.5e-6; // gpt-4o, per input token
const OUTPUT_USD = 1e-5; // gpt-4o, per output token
const TOL = 1e-12;
const gpt4o = (/** @type {number} */ i, /** @type {number} */ o) => i * INPUT_USD + o * OUTPUT_USD;

/** @param {number} actual @param {number} expected @param {string} [what] */
function near(actual, expected, what = '') {
  assert.equal(typeof actual, 'number', `${what}: ${actual} is not a number`);
  assert.ok(Math.abs(actual - expected) <= TOL, `${what}: ${actual} != ${expected}`);
}

gatewaySuite('cost accounting against demo --serve', () => {
  /** @type {Awaited<ReturnType<typeof startGateway>>} */
  let gw;
  /** @type {GatewayClient} */
  let client;
  let n = 0;
  const rid = (/** @type {string} */ name) => `node-cost-${name}-${process.pid}-${n++}`;

  before(async () => {
    gw = await startGateway();
    client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
  });
  after(async () => {
    client?.close();
    if (gw) assert.equal((await gw.stop()).code, 0, gw.stderr());
  });

  test('a cloud call costs its tokens at the model price; the budget has the settled cost', async () => {
    const reportId = rid('cloud');
    const r = await client.generate({ reportId, sectionId: '1', phase: Phase.REFINE, prompt: 'Refine this paragraph. '.repeat(4) });
    assert.equal(r.route.cloud, true);
    assert.equal(r.route.model, 'gpt-4o');
    assert.ok(r.usage.inputTokens > 0 && r.usage.outputTokens > 0);
    assert.equal(r.usage.estimated, false);
    near(/** @type {number} */ (r.costUsd), gpt4o(r.usage.inputTokens, r.usage.outputTokens), 'costUsd');
    near(r.budget.cloudCostUsedUsd, /** @type {number} */ (r.costUsd), 'cloudCostUsedUsd');
    assert.equal(r.budget.cloudCostReservedUsd, 0);
    assert.equal(r.budget.cloudCostLimitUsd, null, 'no dollar cap: null, not 0');

    // A stream's final result is priced the same way.
    let final;
    for await (const ev of client.generateStream({ reportId, sectionId: '1', phase: Phase.REFINE, prompt: 'Again.' })) {
      if (ev.type === 'result') final = ev.result;
    }
    assert.ok(final);
    near(/** @type {number} */ (final.costUsd), gpt4o(final.usage.inputTokens, final.usage.outputTokens), 'stream costUsd');
    near(final.budget.cloudCostUsedUsd, /** @type {number} */ (r.costUsd) + /** @type {number} */ (final.costUsd), 'settled');
  });

  test('a local call costs 0, not null', async () => {
    const r = await client.generate({ reportId: rid('local'), sectionId: '1', phase: Phase.EXPAND, prompt: 'Expand.' });
    assert.equal(r.route.cloud, false);
    assert.equal(r.route.model, 'llama3:8b');
    assert.ok(r.usage.outputTokens > 0);
    assert.equal(r.costUsd, 0);
    assert.equal(r.budget.cloudCostUsedUsd, 0);
  });

  test('a compiled report: records carry cost; usage.cost has totals, all-cloud and savings; phases', async () => {
    const reportId = rid('report');
    const report = await new ReportCompiler(client, await loadOutline(OUTLINE), { reportId }).run();
    assert.equal(report.failures.length, 0);
    assert.equal(report.records.length, 16);
    for (const r of report.records) {
      assert.equal(r.estimated, false);
      if (r.tier === Tier.PRIMARY) near(/** @type {number} */ (r.costUsd), gpt4o(r.inputTokens, r.outputTokens), `${r.sectionId} ${r.phase}`);
      else assert.equal(r.costUsd, 0);
    }
    const u = /** @type {import('../index.js').ReportUsage} */ (report.usage);
    const c = u.cost;
    const cloud = report.records.reduce((s, r) => s + (r.tier === Tier.PRIMARY ? /** @type {number} */ (r.costUsd) : 0), 0);
    const allCloud = report.records.reduce((s, r) => s + gpt4o(r.inputTokens, r.outputTokens), 0);
    near(c.cloudUsd, cloud, 'cloudUsd');
    assert.ok(c.cloudUsd > 0);
    assert.equal(c.localUsd, 0);
    near(c.totalUsd, c.cloudUsd + c.localUsd, 'totalUsd');
    near(/** @type {number} */ (c.allCloudUsd), allCloud, 'allCloudUsd');
    assert.ok(/** @type {number} */ (c.allCloudUsd) > c.totalUsd);
    assert.ok(/** @type {number} */ (c.savingsUsd) > 0);
    near(/** @type {number} */ (c.savingsUsd), /** @type {number} */ (c.allCloudUsd) - c.totalUsd, 'savingsUsd');
    assert.equal(c.unpricedCalls, 0);
    near(u.budget.cloudCostUsedUsd, c.cloudUsd, 'budget.cloudCostUsedUsd');
    assert.equal(u.cloudUsage.estimated, false);

    // One cell per (phase, answering tier); calls, tokens and cost add up to the records'.
    /** @type {Map<string, {calls: number, input: number, output: number, cost: number}>} */
    const expected = new Map();
    for (const r of report.records) {
      const key = `${r.phase} ${r.tier}`;
      const cell = expected.get(key) ?? { calls: 0, input: 0, output: 0, cost: 0 };
      cell.calls++;
      cell.input += r.inputTokens;
      cell.output += r.outputTokens;
      cell.cost += /** @type {number} */ (r.costUsd);
      expected.set(key, cell);
    }
    assert.deepEqual(
      u.phases.map((p) => `${p.phase} ${p.tier}`).sort(),
      ['ABSTRACT PRIMARY', 'DRAFT PRIMARY', 'DRAFT SECONDARY', 'EXPAND SECONDARY', 'REFINE PRIMARY'],
    );
    assert.deepEqual([...expected.keys()].sort(), u.phases.map((p) => `${p.phase} ${p.tier}`).sort());
    const calls = { 'DRAFT PRIMARY': 3, 'DRAFT SECONDARY': 2, 'EXPAND SECONDARY': 5, 'REFINE PRIMARY': 5, 'ABSTRACT PRIMARY': 1 };
    for (const p of u.phases) {
      const key = `${p.phase} ${p.tier}`;
      const e = /** @type {{calls: number, input: number, output: number, cost: number}} */ (expected.get(key));
      assert.equal(p.calls, calls[/** @type {keyof typeof calls} */ (key)], key);
      assert.deepEqual([p.calls, p.usage.inputTokens, p.usage.outputTokens], [e.calls, e.input, e.output], key);
      near(p.costUsd, e.cost, key);
      assert.equal(p.costUsd > 0, p.tier === Tier.PRIMARY, key);
    }
  });

  test('an unknown report costs nothing and has no phases', async () => {
    const u = await client.reportUsage(rid('unknown'));
    assert.deepEqual([u.cost.cloudUsd, u.cost.localUsd, u.cost.totalUsd, u.cost.unpricedCalls], [0, 0, 0, 0]);
    assert.deepEqual(u.phases, []);
  });
});

gatewaySuite('the dollar cap (MAX_CLOUD_COST_USD=0.005)', () => {
  /** @type {Awaited<ReturnType<typeof startGateway>>} */
  let gw;
  /** @type {GatewayClient} */
  let client;
  before(async () => {
    gw = await startGateway({ env: { MAX_CLOUD_COST_USD: '0.005' } });
    client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
  });
  after(async () => {
    client?.close();
    if (gw) assert.equal((await gw.stop()).code, 0, gw.stderr());
  });

  test('the budget shows the cap; a worst case that does not fit goes local; settled stays under', async () => {
    const reportId = `node-cap-${process.pid}`;
    const d = await client.resolveRoute({ reportId, phase: Phase.REFINE });
    assert.equal(d.budget.cloudCostLimitUsd, 0.005);
    assert.equal(d.budget.cloudCostUsedUsd, 0);

    // A small worst case (the input bound + 200 output tokens at $10/M) fits.
    let spent = 0;
    for (let i = 0; i < 2; i++) {
      const r = await client.generate({ reportId, sectionId: '1', phase: Phase.REFINE, prompt: 'Refine.', maxTokens: 200 });
      assert.equal(r.route.tier, Tier.PRIMARY);
      assert.equal(r.route.fallbackReason, FallbackReason.NONE);
      near(/** @type {number} */ (r.costUsd), gpt4o(r.usage.inputTokens, r.usage.outputTokens), 'costUsd');
      spent += /** @type {number} */ (r.costUsd);
      assert.equal(r.budget.cloudCostLimitUsd, 0.005);
      near(r.budget.cloudCostUsedUsd, spent, 'settled');
      assert.equal(r.budget.cloudCostReservedUsd, 0);
      assert.equal(r.budget.exhausted, false);
    }
    // 1000 output tokens may cost $0.01: that cannot fit under $0.005, so the call goes local.
    const r = await client.generate({ reportId, sectionId: '1', phase: Phase.REFINE, prompt: 'Refine.', maxTokens: 1000 });
    assert.equal(r.route.tier, Tier.SECONDARY);
    assert.equal(r.route.fallbackReason, FallbackReason.COST_LIMIT);
    assert.equal(r.costUsd, 0);
    assert.equal(r.budget.exhausted, false);

    // That refusal was for this call only: a small worst case still fits afterwards.
    const again = await client.generate({ reportId, sectionId: '1', phase: Phase.REFINE, prompt: 'Refine.', maxTokens: 200 });
    assert.equal(again.route.tier, Tier.PRIMARY);
    spent += /** @type {number} */ (again.costUsd);

    const u = await client.reportUsage(reportId);
    assert.equal(u.budget.cloudCostLimitUsd, 0.005);
    assert.equal(u.budget.exhausted, false);
    near(u.budget.cloudCostUsedUsd, spent, 'report settled');
    assert.ok(u.budget.cloudCostUsedUsd <= 0.005);
    assert.equal(u.budget.cloudCostReservedUsd, 0);
    near(u.cost.cloudUsd, spent, 'cost.cloudUsd');
  });

  test('a compiled report stays under the cap', async () => {
    const reportId = `node-cap-report-${process.pid}`;
    const report = await new ReportCompiler(client, await loadOutline(OUTLINE), { reportId, maxTokens: 100 }).run();
    assert.equal(report.failures.length, 0);
    const b = /** @type {import('../index.js').ReportUsage} */ (report.usage).budget;
    assert.equal(b.cloudCostLimitUsd, 0.005);
    const settled = report.records.reduce((s, r) => s + (r.tier === Tier.PRIMARY ? /** @type {number} */ (r.costUsd) : 0), 0);
    near(b.cloudCostUsedUsd, settled, 'settled');
    assert.ok(b.cloudCostUsedUsd > 0 && b.cloudCostUsedUsd <= 0.005);
    assert.equal(b.cloudCostReservedUsd, 0);
    for (const r of report.records.filter((r) => r.fallbackReason === FallbackReason.COST_LIMIT)) {
      assert.equal(r.tier, Tier.SECONDARY);
      assert.equal(r.costUsd, 0);
    }
  });
});

// ---- the converters, on fabricated messages (no gateway) -------------------------------------

/** Encodes `obj` as the proto message of `method`'s response and decodes it the way the client does. */
function roundTrip(/** @type {string} */ method, /** @type {any} */ obj) {
  const def = serviceConstructor().service[method];
  return def.responseDeserialize(def.responseSerialize(obj));
}

test('an unpriced response (cost_usd unset) has costUsd null; a set 0 stays 0', () => {
  const base = {
    text: 't',
    route: { tier: 'PROVIDER_TIER_PRIMARY', provider: 'p', model: 'no-price', cloud: true },
    usage: { inputTokens: 3, outputTokens: 4, estimated: true },
    budget: { cloudCallsUsed: 1, cloudCallsLimit: 2 },
    attempts: 1,
  };
  const wire = roundTrip('Generate', base);
  assert.equal(wire.costUsd, undefined, 'proto-loader leaves an unset optional field out');
  assert.equal(wire._costUsd, undefined);
  const r = resultFromWire(wire);
  assert.equal(r.costUsd, null);
  assert.deepEqual(r.usage, { inputTokens: 3, outputTokens: 4, estimated: true, cached: false });
  assert.equal(r.budget.cloudCostLimitUsd, null, 'no cap: null, not 0');

  const free = roundTrip('Generate', { ...base, costUsd: 0, budget: { cloudCostLimitUsd: 0 } });
  assert.equal(free._costUsd, 'costUsd', 'the synthetic oneof names the set member');
  assert.equal(resultFromWire(free).costUsd, 0);
  assert.equal(resultFromWire(free).budget.cloudCostLimitUsd, 0);
  assert.equal(resultFromWire(roundTrip('Generate', { ...base, costUsd: 0.125 })).costUsd, 0.125);
});

test('an unpriced primary model leaves allCloudUsd and savingsUsd null', () => {
  const msg = {
    reportId: 'r',
    cost: { cloudUsd: 0.5, localUsd: 0.25, totalUsd: 0.75, unpricedCalls: 2, abandonedUsd: 0.125 },
    phases: [
      { phase: 'COMPILATION_PHASE_DRAFT', tier: 'PROVIDER_TIER_SECONDARY', calls: 3, usage: { inputTokens: 7, outputTokens: 8 }, costUsd: 0.25 },
    ],
  };
  const u = reportUsageFromWire(roundTrip('GetReportUsage', msg));
  assert.deepEqual(u.cost, { cloudUsd: 0.5, localUsd: 0.25, totalUsd: 0.75, allCloudUsd: null, savingsUsd: null, unpricedCalls: 2, abandonedUsd: 0.125 });
  assert.deepEqual(u.phases, [
    {
      phase: 'DRAFT',
      tier: 'SECONDARY',
      calls: 3,
      usage: { inputTokens: 7, outputTokens: 8, estimated: false, cached: false },
      costUsd: 0.25,
      cachedCalls: 0,
      cacheSavedUsd: 0,
    },
  ]);
  const priced = reportUsageFromWire(roundTrip('GetReportUsage', { ...msg, cost: { ...msg.cost, allCloudUsd: 1, savingsUsd: 0 } }));
  assert.equal(priced.cost.allCloudUsd, 1);
  assert.equal(priced.cost.savingsUsd, 0, 'a set 0 is a saving of 0, not unknown');
});

test('optionalNumber: the synthetic oneof decides; without one, presence of the value', () => {
  assert.equal(optionalNumber({ costUsd: 0, _costUsd: 'costUsd' }, 'costUsd'), 0);
  assert.equal(optionalNumber({ costUsd: 0, _costUsd: 'other' }, 'costUsd'), null);
  assert.equal(optionalNumber({}, 'costUsd'), null);
  assert.equal(optionalNumber({ costUsd: 1.5 }, 'costUsd'), 1.5);
  assert.equal(optionalNumber(null, 'costUsd'), null);
  assert.equal(resultFromWire({}).costUsd, null);
});
