#!/usr/bin/env node
// Compiles examples/outline.yaml through vra-gateway with the Node SDK and prints how every
// call was routed, then the report's cloud budget and cost.
//
//   (cd clients/node && npm ci)                     # once: the SDK's dependencies
//   vra-gateway demo --serve                        # or any gateway; prints its address
//   node examples/node/compile-report.mjs --target 127.0.0.1:50051 [--out report.md]
//
// Options: [OUTLINE] (default examples/outline.yaml) --target ADDR (else VRA_GATEWAY_TARGET,
// else 127.0.0.1:50051) --token T (else VRA_TOKEN) --tls-ca FILE [--tls-cert FILE --tls-key FILE]
// --report-id ID --concurrency N --stream --out FILE.
// Exit codes: 0 compiled, 1 a section failed or the gateway could not be reached, 2 bad arguments.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

// From the repo, the SDK is imported by path; an application would `npm install ./clients/node`
// and import '@vra/gateway-client'.
import { GatewayClient, OutlineError, ReportCompiler, loadOutline } from '../../clients/node/index.js';

const here = dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  if (msg) console.error(`compile-report: ${msg}`);
  console.error(
    'usage: node examples/node/compile-report.mjs [OUTLINE] [--target ADDR] [--token T] ' +
      '[--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--report-id ID] [--concurrency N] [--stream] [--out FILE]',
  );
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    allowPositionals: true,
    options: {
      target: { type: 'string' },
      token: { type: 'string' },
      'tls-ca': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'report-id': { type: 'string' },
      concurrency: { type: 'string', default: '2' },
      stream: { type: 'boolean', default: false },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  usage(e.message);
}
const { values: o, positionals } = args;
if (o.help) usage();
if (positionals.length > 1) usage('at most one outline');
const concurrency = Number(o.concurrency);
if (!Number.isInteger(concurrency) || concurrency < 1) usage('--concurrency must be a positive integer');
if (Boolean(o['tls-cert']) !== Boolean(o['tls-key'])) usage('--tls-cert and --tls-key go together');
if (o['tls-cert'] && !o['tls-ca']) usage('--tls-cert needs --tls-ca');

let outline;
try {
  outline = await loadOutline(positionals[0] ?? join(here, '..', 'outline.yaml'));
} catch (e) {
  usage(e instanceof OutlineError ? e.message : `cannot read the outline: ${e.message}`);
}

const client = new GatewayClient({
  target: o.target,
  token: o.token,
  tls: o['tls-ca'] ? { ca: o['tls-ca'], cert: o['tls-cert'], key: o['tls-key'] } : undefined,
});
const compiler = new ReportCompiler(client, outline, {
  reportId: o['report-id'],
  concurrency,
  stream: o.stream,
  onProgress: (r) =>
    console.error(`  ${r.sectionId} ${r.phase} → ${r.tier} ${r.provider}/${r.model} (${r.rule}) ${r.latencyMs} ms`),
});
console.error(`compiling "${outline.title}" as ${compiler.reportId} via ${client.target}`);
const report = await compiler.run();
client.close();

if (o.out) writeFileSync(o.out, report.markdown);

/** USD with 6 decimals, like the gateway's cost table. */
const usd = (n) => `$${n.toFixed(6)}`;

/** `  cost $T (cloud $C, local $L); all on the primary model $A; saved $S (P%)`. */
function costLine(c) {
  let line = `  cost ${usd(c.totalUsd)} (cloud ${usd(c.cloudUsd)}, local ${usd(c.localUsd)})`;
  // allCloudUsd and savingsUsd are null when the primary model has no price: unknown, not 0.
  if (c.allCloudUsd === null) line += '; all on the primary model unknown (it has no price)';
  else line += `; all on the primary model ${usd(c.allCloudUsd)}`;
  if (c.savingsUsd === null) line += '; saved unknown';
  else {
    line += `; saved ${usd(c.savingsUsd)}`;
    if (c.allCloudUsd) line += ` (${Math.round((100 * c.savingsUsd) / c.allCloudUsd)}%)`;
  }
  if (c.unpricedCalls) {
    line += ` — ${c.unpricedCalls} call(s) of unpriced models not counted (sums are lower bounds)`;
  }
  return line;
}

const titles = new Map(outline.sections.map((s) => [s.id, `${s.id} ${s.title}`]));
const rows = report.records.map((r) => [
  titles.get(r.sectionId) ?? 'Abstract',
  r.phase + (r.streamed ? '*' : ''),
  r.tier ?? '-',
  r.provider,
  r.model,
  r.rule,
  r.fallbackReason === 'NONE' ? '-' : r.fallbackReason,
  String(r.attempts),
]);
const header = ['section', 'phase', 'tier', 'provider', 'model', 'rule', 'fallback', 'attempts'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
const line = (cells) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
console.log(line(header));
console.log('-'.repeat(line(header).length));
for (const row of rows) console.log(line(row));
if (report.records.some((r) => r.streamed)) console.log('* streamed');

for (const f of report.failures) {
  console.log(`FAILED ${titles.get(f.sectionId) ?? 'Abstract'} ${f.phase}: ${f.error.code ?? f.error.name}: ${f.error.message}`);
}
console.log(`\nreport ${report.reportId}:`);
if (report.usage) {
  const { budget: b, primaryCalls, secondaryCalls, fallbacks } = report.usage;
  console.log(
    `  cloud calls used ${b.cloudCallsUsed}/${b.cloudCallsLimit}${b.exhausted ? ' — exhausted' : ''}` +
      '  (every HTTP request to the cloud counts, retries included)',
  );
  console.log(`  calls: ${primaryCalls} primary, ${secondaryCalls} secondary, ${fallbacks} fallbacks`);
  console.log(costLine(report.usage.cost));
} else {
  console.log('  usage unavailable (the gateway could not be asked)');
}
if (o.out) console.error(`wrote ${o.out}`);
process.exit(report.failures.length ? 1 : 0);
