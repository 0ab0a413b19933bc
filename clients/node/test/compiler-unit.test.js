// ReportCompiler and outlines without a gateway: a scripted fake client stands in for it.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  InvalidArgument,
  OutlineError,
  Phase,
  ReportCompiler,
  SectionType,
  Unauthenticated,
  Unavailable,
  defaultReportId,
  loadOutline,
  normaliseOutline,
  renderTemplate,
} from '../index.js';
import { OUTLINE } from './helpers/gateway.js';

const OUT = { title: 'T', sections: [{ id: 'a', title: 'Alpha', type: 'analysis', brief: 'b' }, { id: 'b', title: 'Beta', type: 'Methodology' }] };

/** A fake GatewayClient: `fail(req, n)` decides whether the n-th call (from 0) throws. */
function fakeClient(fail = () => null) {
  const calls = [];
  return {
    calls,
    async generate(req) {
      const err = fail(req, calls.length);
      calls.push(req);
      if (err) throw err;
      return {
        text: `<${req.phase} ${req.sectionId}>`,
        route: { tier: 'PRIMARY', provider: 'p', model: 'm', cloud: true, rule: 'r', fallbackReason: 'NONE' },
        usage: { inputTokens: 1, outputTokens: 2, estimated: false },
        budget: { cloudCallsUsed: 0, cloudCallsLimit: 0, exhausted: false, cloudCostUsedUsd: 0, cloudCostReservedUsd: 0, cloudCostLimitUsd: null },
        attempts: 1,
        finishReason: 'stop',
        costUsd: 0.25,
      };
    },
    async reportUsage(reportId) {
      return { reportId };
    },
  };
}

test('loadOutline reads examples/outline.yaml, and JSON', async () => {
  const o = await loadOutline(OUTLINE);
  assert.equal(o.title, 'Hybrid LLM Routing for Long Technical Reports');
  assert.deepEqual(o.sections.map((s) => [s.id, s.type]), [
    ['1', 'INTRODUCTION'], ['2', 'METHODOLOGY'], ['3', 'ANALYSIS'], ['4', 'IMPLEMENTATION'], ['5', 'CONCLUSION'],
  ]);
  assert.ok(o.sections[0].brief.startsWith('Why report builders'));
  const dir = mkdtempSync(join(tmpdir(), 'vra-outline-'));
  writeFileSync(join(dir, 'o.json'), JSON.stringify({ ...OUT, report_id: 'my-report' }));
  const j = await loadOutline(join(dir, 'o.json'));
  assert.equal(j.reportId, 'my-report');
  assert.equal(j.sections[1].type, SectionType.METHODOLOGY);
  assert.equal(j.sections[1].brief, '');
  writeFileSync(join(dir, 'bad.yaml'), 'title: [unclosed');
  await assert.rejects(loadOutline(join(dir, 'bad.yaml')), OutlineError);
});

test('normaliseOutline rejects bad outlines with the path of the problem', () => {
  assert.throws(() => normaliseOutline({ sections: OUT.sections }), /outline.title/);
  assert.throws(() => normaliseOutline({ title: 'T', sections: [] }), /outline.sections/);
  assert.throws(() => normaliseOutline({ title: 'T', sections: [{ id: '1', title: 'x', type: 'appendix' }] }), /sections\[0\].type/);
  assert.throws(() => normaliseOutline({ title: 'T', sections: [{ id: '1', title: 'x', type: 'other' }, { id: '1', title: 'y', type: 'other' }] }), /duplicate/);
  assert.throws(() => normaliseOutline({ title: 'T', sections: [{ id: 'abstract', title: 'x', type: 'other' }] }), /reserved/);
});

test('templates: placeholders filled, {{ }} literal, unknown placeholders refused', () => {
  assert.equal(renderTemplate('{report_title}/{section_id} {{x}} {previous}', { report_title: 'R', section_id: '1', previous: 'p' }), 'R/1 {x} p');
  assert.throws(() => new ReportCompiler(fakeClient(), OUT, { templates: { DRAFT: 'Hi {nmae}' } }), /unknown placeholder \{nmae\}/);
  assert.throws(() => new ReportCompiler(fakeClient(), OUT, { templates: { SUMMARY: 'x' } }), /templates: unknown phase "SUMMARY"/);
  assert.throws(() => new ReportCompiler(fakeClient(), OUT, { maxTokens: { draftt: 3 } }), /maxTokens: unknown phase/);
});

test('default report id: a slug of the title plus 8 hex digits', () => {
  assert.match(defaultReportId('Hybrid LLM Routing: Q3!'), /^hybrid-llm-routing-q3-[0-9a-f]{8}$/);
  assert.notEqual(defaultReportId('x'), defaultReportId('x'));
  assert.equal(new ReportCompiler(fakeClient(), { ...OUT, report_id: 'fixed' }).reportId, 'fixed');
  assert.equal(new ReportCompiler(fakeClient(), { ...OUT, report_id: 'fixed' }, { reportId: 'opt' }).reportId, 'opt');
});

test('each phase is fed the previous one; the abstract gets every refined section; per-phase maxTokens', async () => {
  const client = fakeClient();
  const report = await new ReportCompiler(client, OUT, {
    concurrency: 1,
    maxTokens: { DRAFT: 100, abstract: 50 },
    templates: { EXPAND: 'E[{previous}]', REFINE: 'R[{previous}]', ABSTRACT: 'A[{sections}]' },
    systemPrompt: 'sys',
  }).run();
  const byKey = Object.fromEntries(client.calls.map((c) => [`${c.sectionId} ${c.phase}`, c]));
  assert.equal(client.calls.length, 7);
  assert.match(byKey['a DRAFT'].prompt, /"Alpha" \(ANALYSIS\) of the technical report "T"\.\nBrief: b/);
  assert.equal(byKey['a EXPAND'].prompt, 'E[<DRAFT a>]');
  assert.equal(byKey['a REFINE'].prompt, 'R[<EXPAND a>]');
  assert.equal(byKey['abstract ABSTRACT'].prompt, 'A[## Alpha\n\n<REFINE a>\n\n## Beta\n\n<REFINE b>]');
  assert.equal(byKey['a DRAFT'].maxTokens, 100);
  assert.equal(byKey['a EXPAND'].maxTokens, undefined);
  assert.equal(byKey['abstract ABSTRACT'].maxTokens, 50);
  assert.equal(byKey['b DRAFT'].sectionType, 'METHODOLOGY');
  assert.ok(client.calls.every((c) => c.reportId === report.reportId && c.systemPrompt === 'sys'));
  assert.equal(report.markdown, '# T\n\n## Abstract\n\n<ABSTRACT abstract>\n\n## Alpha\n\n<REFINE a>\n\n## Beta\n\n<REFINE b>\n');
  assert.deepEqual(report.records.map((r) => `${r.sectionId} ${r.phase}`), ['a DRAFT', 'a EXPAND', 'a REFINE', 'b DRAFT', 'b EXPAND', 'b REFINE', 'abstract ABSTRACT']);
});

test('concurrency: at most N sections in flight', async () => {
  let inFlight = 0;
  let peak = 0;
  const base = fakeClient();
  const client = {
    ...base,
    async generate(req) {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((r) => setTimeout(r, 5));
      inFlight--;
      return base.generate(req);
    },
  };
  const sections = Array.from({ length: 6 }, (_, i) => ({ id: `s${i}`, title: `S${i}`, type: 'other' }));
  await new ReportCompiler(client, { title: 'T', sections }, { concurrency: 3 }).run();
  assert.equal(peak, 3);
});

test('a failing call is retried once, then succeeds', async () => {
  const client = fakeClient((req, n) => (req.sectionId === 'a' && req.phase === 'EXPAND' && !client.calls.some((c) => c.sectionId === 'a' && c.phase === 'EXPAND') ? new Unavailable('UNAVAILABLE', 'blip') : null));
  const report = await new ReportCompiler(client, OUT, { retryDelayMs: 1 }).run();
  assert.equal(report.failures.length, 0);
  assert.equal(client.calls.filter((c) => c.sectionId === 'a' && c.phase === 'EXPAND').length, 2);
  assert.equal(report.records.length, 7);
});

test('InvalidArgument and Unauthenticated are not retried; the failure is reported with a placeholder', async () => {
  for (const err of [new InvalidArgument('INVALID_ARGUMENT', 'prompt: too long'), new Unauthenticated('UNAUTHENTICATED', 'missing or invalid credentials')]) {
    const client = fakeClient((req) => (req.sectionId === 'b' && req.phase === Phase.REFINE ? err : null));
    const report = await new ReportCompiler(client, OUT, { retryDelayMs: 1 }).run();
    assert.equal(client.calls.filter((c) => c.sectionId === 'b' && c.phase === 'REFINE').length, 1, err.name);
    assert.deepEqual(report.failures.map((f) => [f.sectionId, f.phase, f.error]), [['b', 'REFINE', err]]);
    assert.match(report.markdown, new RegExp(`## Beta\\n\\n> \\*\\*\\[section not compiled — REFINE failed: ${err.code}: `));
    assert.ok(!report.markdown.includes('<REFINE b>'));
    assert.ok(report.markdown.includes('<REFINE a>'));
    assert.equal(report.records.length, 6);
  }
});

test('an exception thrown by onProgress ends the run with that exception, without a retry', async () => {
  const client = fakeClient();
  const boom = new Error('callback bug');
  const run = new ReportCompiler(client, OUT, { concurrency: 1, onProgress: () => { throw boom; } }).run();
  await assert.rejects(run, (e) => e === boom);
  assert.equal(client.calls.length, 1);
});
