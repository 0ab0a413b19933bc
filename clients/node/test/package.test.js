// The package itself: shipped proto, exports, declarations in step with the runtime.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import * as sdk from '@vra/gateway-client';
import { PACKAGE_ROOT, REPO_ROOT } from './helpers/gateway.js';

const SHIPPED = join(PACKAGE_ROOT, 'proto', 'vra', 'gateway', 'v1', 'gateway.proto');
const SOURCE = join(REPO_ROOT, 'proto', 'vra', 'gateway', 'v1', 'gateway.proto');

test('the shipped proto is byte-identical to the repo proto (clients/gen.sh copies it)', { skip: !existsSync(SOURCE) && 'not in the repo' }, () => {
  assert.ok(readFileSync(SHIPPED).equals(readFileSync(SOURCE)), `${SHIPPED} differs from ${SOURCE}: run clients/gen.sh`);
});

test('package.json: ESM, node >= 18, exports with types, proto shipped', () => {
  const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.name, '@vra/gateway-client');
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.engines.node, '>=18');
  assert.equal(pkg.exports['.'].types, './index.d.ts');
  assert.equal(pkg.exports['.'].import, './index.js');
  assert.ok(pkg.files.includes('proto/'));
  for (const dep of ['@grpc/grpc-js', '@grpc/proto-loader', 'yaml']) assert.ok(pkg.dependencies[dep], dep);
});

test('index.d.ts declares exactly the runtime exports', () => {
  const dts = readFileSync(join(PACKAGE_ROOT, 'index.d.ts'), 'utf8');
  const declared = new Set([...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]));
  assert.deepEqual([...declared].sort(), Object.keys(sdk).sort());
});

test('enums are frozen plain objects of their own names', () => {
  assert.deepEqual(Object.keys(sdk.Phase), ['DRAFT', 'EXPAND', 'REFINE', 'ABSTRACT']);
  assert.deepEqual(Object.keys(sdk.SectionType), ['INTRODUCTION', 'CONCLUSION', 'ANALYSIS', 'METHODOLOGY', 'IMPLEMENTATION', 'OTHER']);
  assert.deepEqual(Object.keys(sdk.Tier), ['PRIMARY', 'SECONDARY']);
  assert.deepEqual(Object.keys(sdk.FallbackReason), ['NONE', 'COST_LIMIT', 'PRIMARY_ERROR', 'CIRCUIT_OPEN', 'LEDGER_UNAVAILABLE', 'CLIENT_QUOTA']);
  for (const e of [sdk.Phase, sdk.SectionType, sdk.Tier, sdk.FallbackReason]) {
    assert.ok(Object.isFrozen(e));
    for (const [k, v] of Object.entries(e)) assert.equal(k, v);
  }
});

test('client defaults: VRA_GATEWAY_TARGET, else 127.0.0.1:50051; 120 s deadline', () => {
  const saved = process.env.VRA_GATEWAY_TARGET;
  try {
    delete process.env.VRA_GATEWAY_TARGET;
    const a = new sdk.GatewayClient();
    assert.equal(a.target, '127.0.0.1:50051');
    assert.equal(a.timeoutMs, 120_000);
    a.close();
    process.env.VRA_GATEWAY_TARGET = '127.0.0.1:6';
    const b = new sdk.GatewayClient();
    assert.equal(b.target, '127.0.0.1:6');
    b.close();
    const c = new sdk.GatewayClient({ target: '127.0.0.1:7', timeoutMs: 5 });
    assert.equal(c.target, '127.0.0.1:7');
    assert.equal(c.timeoutMs, 5);
    c.close();
  } finally {
    if (saved === undefined) delete process.env.VRA_GATEWAY_TARGET;
    else process.env.VRA_GATEWAY_TARGET = saved;
  }
  assert.throws(() => new sdk.GatewayClient({ timeoutMs: 0 }), TypeError);
  assert.throws(() => new sdk.GatewayClient({ tls: { cert: '-----BEGIN CERTIFICATE-----' } }), /cert and key/);
});

test('client target as a string: new GatewayClient(\'host:port\'[, options]), over VRA_GATEWAY_TARGET', () => {
  const saved = process.env.VRA_GATEWAY_TARGET;
  try {
    process.env.VRA_GATEWAY_TARGET = '127.0.0.1:6';
    const a = new sdk.GatewayClient('127.0.0.1:6000');
    assert.equal(a.target, '127.0.0.1:6000');
    assert.equal(a.timeoutMs, 120_000);
    a.close();
    const b = new sdk.GatewayClient('127.0.0.1:6001', { timeoutMs: 5 });
    assert.equal(b.target, '127.0.0.1:6001');
    assert.equal(b.timeoutMs, 5);
    b.close();
    const c = new sdk.GatewayClient('127.0.0.1:6002', { target: '127.0.0.1:6002' });
    assert.equal(c.target, '127.0.0.1:6002', 'the same target twice is not a conflict');
    c.close();
    const d = new sdk.GatewayClient('127.0.0.1:6003', undefined);
    assert.equal(d.target, '127.0.0.1:6003');
    d.close();
  } finally {
    if (saved === undefined) delete process.env.VRA_GATEWAY_TARGET;
    else process.env.VRA_GATEWAY_TARGET = saved;
  }
});

test('client constructor: any other first argument is a TypeError naming what is accepted', () => {
  const accepted = /a 'host:port' string or an options object/;
  for (const bad of [6000, 0, true, false, null, [], ['127.0.0.1:6000'], () => '127.0.0.1:6000', Symbol('t'), 10n]) {
    assert.throws(
      () => new sdk.GatewayClient(/** @type {any} */ (bad)),
      (/** @type {any} */ e) => e instanceof TypeError && accepted.test(e.message),
      `new GatewayClient(<${typeof bad}> ${String(bad)})`,
    );
  }
  assert.throws(() => new sdk.GatewayClient(''), (/** @type {any} */ e) => e instanceof TypeError && /non-empty/.test(e.message));
  // A string target plus a different options.target: ambiguous, so refused.
  assert.throws(
    () => new sdk.GatewayClient('127.0.0.1:6000', { target: '127.0.0.1:7000' }),
    (/** @type {any} */ e) => e instanceof TypeError && /127\.0\.0\.1:6000/.test(e.message) && /127\.0\.0\.1:7000/.test(e.message),
  );
  // The options after a string must be an object too; options after an options object are refused.
  for (const bad of [5000, 'x', null, [], true]) {
    assert.throws(() => new sdk.GatewayClient('127.0.0.1:6000', /** @type {any} */ (bad)), /options: expected an object/);
  }
  assert.throws(
    () => new sdk.GatewayClient({ target: '127.0.0.1:6000' }, /** @type {any} */ ({ timeoutMs: 5 })),
    /second argument/,
  );
});
