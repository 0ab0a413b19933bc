// Bearer tokens against a gateway with VRA_CLIENTS_FILE.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { GatewayClient, Phase, ReportCompiler, SectionType, Unauthenticated } from '../index.js';
import { CountingClient, gatewaySuite, startGateway } from './helpers/gateway.js';

gatewaySuite('bearer token auth (VRA_CLIENTS_FILE)', () => {
  const token = `vra_${randomBytes(32).toString('hex')}`;
  let dir;
  let gw;
  const req = { reportId: 'auth-report', sectionId: '1', phase: Phase.DRAFT, sectionType: SectionType.ANALYSIS, prompt: 'x' };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vra-auth-'));
    const sha = createHash('sha256').update(token).digest('hex');
    const file = join(dir, 'clients.toml');
    writeFileSync(file, `[[client]]\nid = "reports-node"\ntoken_sha256 = "${sha}"\nmax_cloud_calls = 4\n`);
    gw = await startGateway({ env: { VRA_CLIENTS_FILE: file } });
  });
  after(async () => {
    if (gw) {
      const { code } = await gw.stop();
      assert.equal(code, 0, gw.stderr());
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a good token is sent as authorization: Bearer and works for every RPC', async () => {
    const client = new GatewayClient({ target: gw.target, token, timeoutMs: 10_000 });
    try {
      const r = await client.generate(req);
      assert.equal(r.route.rule, 'draft-reasoning-primary');
      assert.equal(r.budget.cloudCallsLimit, 4, "the client's max_cloud_calls applies: the gateway knows who called");
      let last;
      for await (const ev of client.generateStream({ ...req, phase: Phase.EXPAND })) last = ev;
      assert.equal(last.type, 'result');
      const d = await client.resolveRoute({ reportId: req.reportId, phase: Phase.REFINE });
      assert.equal(d.budget.cloudCallsUsed, 1);
      const u = await client.reportUsage(req.reportId);
      assert.equal(u.primaryCalls + u.secondaryCalls, 2);
    } finally {
      client.close();
    }
  });

  test('VRA_TOKEN is the default token', async () => {
    const saved = process.env.VRA_TOKEN;
    process.env.VRA_TOKEN = token;
    const client = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
    try {
      const u = await client.reportUsage(req.reportId);
      assert.equal(u.reportId, req.reportId);
    } finally {
      client.close();
      if (saved === undefined) delete process.env.VRA_TOKEN;
      else process.env.VRA_TOKEN = saved;
    }
  });

  test('a missing or wrong token → Unauthenticated, on unary calls and streams', async () => {
    const saved = process.env.VRA_TOKEN;
    delete process.env.VRA_TOKEN;
    const none = new GatewayClient({ target: gw.target, timeoutMs: 10_000 });
    const wrong = new GatewayClient({ target: gw.target, timeoutMs: 10_000, token: `vra_${'0'.repeat(64)}` });
    try {
      for (const client of [none, wrong]) {
        const e1 = await client.generate(req).catch((e) => e);
        assert.ok(e1 instanceof Unauthenticated, `got ${e1?.name}: ${e1?.message}`);
        assert.equal(e1.code, 'UNAUTHENTICATED');
        assert.ok(!e1.message.includes(token.slice(4, 20)), 'the token is never echoed');
        const e2 = await client.reportUsage(req.reportId).catch((e) => e);
        assert.ok(e2 instanceof Unauthenticated);
        const e3 = await (async () => {
          for await (const _ of client.generateStream(req));
        })().catch((e) => e);
        assert.ok(e3 instanceof Unauthenticated);
      }
    } finally {
      none.close();
      wrong.close();
      if (saved !== undefined) process.env.VRA_TOKEN = saved;
    }
  });

  test('ReportCompiler does not retry Unauthenticated and reports every section', async () => {
    const saved = process.env.VRA_TOKEN;
    delete process.env.VRA_TOKEN;
    const client = new CountingClient({ target: gw.target, timeoutMs: 10_000 });
    try {
      const outline = { title: 'Auth', sections: [{ id: '1', title: 'A', type: 'analysis' }, { id: '2', title: 'B', type: 'other' }] };
      const report = await new ReportCompiler(client, outline, { retryDelayMs: 1 }).run();
      assert.equal(client.calls, 3, 'two sections and the abstract, no retries');
      assert.equal(report.failures.length, 3);
      assert.ok(report.failures.every((f) => f.error instanceof Unauthenticated));
      assert.equal(report.usage, null);
    } finally {
      client.close();
      if (saved !== undefined) process.env.VRA_TOKEN = saved;
    }
  });
});
