// Compiled by `npm run typecheck` (tsc --noEmit), never run: it checks that index.d.ts
// describes the API as the README uses it, through the package's own `exports`.
import {
  BudgetExhausted,
  FallbackReason,
  GatewayClient,
  GatewayError,
  InvalidArgument,
  Phase,
  ReportCompiler,
  SectionType,
  Tier,
  loadOutline,
  type CallRecord,
  type Report,
  type Result,
  type StreamEvent,
} from '@vra/gateway-client';

async function main(): Promise<void> {
  const client = new GatewayClient({
    target: '127.0.0.1:50051',
    timeoutMs: 30_000,
    token: process.env.VRA_TOKEN,
    tls: { ca: 'ca.pem', cert: Buffer.from(''), key: 'client.key', serverName: 'localhost' },
  });
  const byString = new GatewayClient('127.0.0.1:50051');
  const byStringWithOptions = new GatewayClient('127.0.0.1:50051', { timeoutMs: 30_000, token: 'vra_x' });
  console.log(byString.target, byStringWithOptions.timeoutMs);
  // @ts-expect-error a port number is not a target
  new GatewayClient(50051);
  // @ts-expect-error options after options
  new GatewayClient({ target: '127.0.0.1:50051' }, { timeoutMs: 1 });
  const r: Result = await client.generate({
    reportId: 'q3',
    sectionId: '1',
    phase: Phase.DRAFT,
    sectionType: SectionType.INTRODUCTION,
    prompt: 'Write the introduction.',
    maxTokens: 200,
    temperature: 0.2,
    stop: ['\n\n'],
  });
  const tier: Tier | null = r.route.tier;
  const reason: FallbackReason = r.route.fallbackReason;
  const used: number = r.budget.cloudCallsUsed + r.usage.inputTokens + r.attempts;
  if (tier === Tier.PRIMARY && reason === FallbackReason.NONE && used > 0) console.log(r.text, r.finishReason);

  let text = '';
  for await (const ev of client.generateStream({ reportId: 'q3', sectionId: '1', phase: 'expand', prompt: 'x' })) {
    const e: StreamEvent = ev;
    if (e.type === 'delta') text += e.text;
    else console.log(e.result.route.rule, e.result.text === text);
  }

  const d = await client.resolveRoute({ reportId: 'q3', phase: Phase.REFINE, timeoutMs: 1000 });
  console.log(d.route.provider, d.budget.exhausted, d.clientQuota?.limit);
  const u = await client.reportUsage('q3', { signal: new AbortController().signal });
  console.log(u.primaryCalls, u.cloudUsage.outputTokens, u.clientQuota?.used);
  const cost: number | null = r.costUsd;
  const cap: number | null = u.budget.cloudCostLimitUsd;
  const saved: number | null = u.cost.savingsUsd;
  const allCloud: number | null = u.cost.allCloudUsd;
  console.log(cost ?? 'unknown', cap, saved, allCloud, u.cost.totalUsd, u.cost.unpricedCalls);
  console.log(u.budget.cloudCostUsedUsd + u.budget.cloudCostReservedUsd, r.usage.estimated);
  for (const p of u.phases) {
    const ph: Phase | null = p.phase;
    const t: Tier | null = p.tier;
    console.log(ph, t, p.calls, p.usage.inputTokens, p.costUsd);
  }

  try {
    await client.generate({ reportId: '', sectionId: '1', phase: Phase.DRAFT, prompt: 'x' });
  } catch (e) {
    if (e instanceof InvalidArgument) console.log(e.field, e.code, e.kind);
    else if (e instanceof BudgetExhausted) console.log(e.details);
    else if (e instanceof GatewayError) console.log(e.grpcCode, e.metadata['vra-error']);
  }

  const outline = await loadOutline('examples/outline.yaml');
  const report: Report = await new ReportCompiler(client, outline, {
    concurrency: 2,
    stream: true,
    maxTokens: { DRAFT: 400, ABSTRACT: 200 },
    templates: { REFINE: 'Refine: {previous}' },
    onDelta: (sectionId: string, phase: Phase, delta: string) => process.stdout.write(sectionId + phase + delta),
    onProgress: (rec: CallRecord) =>
      console.log(rec.sectionId, rec.phase, rec.tier, rec.latencyMs, rec.costUsd ?? 'unknown', rec.estimated),
  }).run();
  for (const f of report.failures) console.log(f.sectionId, f.phase, f.error.message);
  console.log(report.markdown, report.usage?.budget.cloudCallsUsed, report.records.length);
  new ReportCompiler(client, { title: 'T', report_id: 'x', sections: [{ id: 1, title: 'A', type: 'other' }] });
  client.close();
}

void main;
