// examples/node/compile-report.mjs runs from the repo against a gateway.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';

import { REPO_ROOT, closedPort, gatewaySuite, startGateway } from './helpers/gateway.js';

const run = promisify(execFile);
const EXAMPLE = join(REPO_ROOT, 'examples', 'node', 'compile-report.mjs');

gatewaySuite('examples/node/compile-report.mjs', () => {
  let gw;
  before(async () => {
    gw = await startGateway();
  });
  after(async () => {
    if (gw) assert.equal((await gw.stop()).code, 0, gw.stderr());
  });

  test('prints the routing table, the budget and the cost line, writes the report, exits 0', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'vra-example-')), 'report.md');
    const env = { ...process.env, VRA_GATEWAY_TARGET: gw.target };
    delete env.VRA_TOKEN;
    const { stdout } = await run(process.execPath, [EXAMPLE, '--out', out, '--stream'], { env, cwd: REPO_ROOT });
    const lines = stdout.split('\n');
    assert.match(lines[0], /^section\s+phase\s+tier\s+provider\s+model\s+rule\s+fallback\s+attempts$/);
    const rows = lines.filter((l) => /^(\d \w+|Abstract)\s+(DRAFT|EXPAND|REFINE|ABSTRACT)\*?\s/.test(l));
    assert.equal(rows.length, 16);
    assert.match(rows[0], /^1 Introduction\s+DRAFT\*\s+PRIMARY\s+openai\s+gpt-4o\s+draft-reasoning-primary\s+-\s+1$/);
    assert.match(rows[3], /^2 Methodology\s+DRAFT\*\s+SECONDARY\s+local\s+llama3:8b\s+draft-template-secondary\s+-\s+1$/);
    assert.match(stdout, /cloud calls used 9\/15 /);
    assert.match(stdout, /^ {2}cost \$0\.\d{6} \(cloud \$0\.\d{6}, local \$0\.000000\); all on the primary model \$0\.\d{6}; saved \$0\.\d{6} \(\d+%\)$/m);
    assert.match(readFileSync(out, 'utf8'), /^# Hybrid LLM Routing for Long Technical Reports\n\n## Abstract\n/);
  });

  test('exits 1 and names the failures when the gateway cannot be reached', async () => {
    const env = { ...process.env, VRA_GATEWAY_TARGET: `127.0.0.1:${await closedPort()}` };
    const err = await run(process.execPath, [EXAMPLE], { env, cwd: REPO_ROOT }).catch((e) => e);
    assert.equal(err.code, 1);
    assert.equal((err.stdout.match(/^FAILED /gm) || []).length, 6);
  });

  test('exits 2 on bad arguments', async () => {
    const err = await run(process.execPath, [EXAMPLE, '--concurrency', '0']).catch((e) => e);
    assert.equal(err.code, 2);
    assert.match(err.stderr, /usage:/);
  });
});
