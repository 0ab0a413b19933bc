// The status → error mapping (src/errors.js), on fabricated grpc-js errors with trailers.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import grpc from '@grpc/grpc-js';

import {
  BudgetExhausted,
  DeadlineExceeded,
  GatewayError,
  InvalidArgument,
  Overloaded,
  ResourceExhausted,
  Unauthenticated,
  Unavailable,
  fromGrpcError,
} from '../index.js';

/** A grpc-js ServiceError as the library builds it: code, details, trailers in metadata. */
function serviceError(code, details, trailers = {}) {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(trailers)) metadata.set(k, v);
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata });
}

test('RESOURCE_EXHAUSTED with vra-error resource_exhausted (report budget) → BudgetExhausted', () => {
  const e = fromGrpcError(serviceError(grpc.status.RESOURCE_EXHAUSTED, 'cloud budget spent', { 'vra-error': 'resource_exhausted' }));
  assert.ok(e instanceof BudgetExhausted);
  assert.ok(e instanceof ResourceExhausted && e instanceof GatewayError && e instanceof Error);
  assert.ok(!(e instanceof Overloaded));
  assert.equal(e.code, 'RESOURCE_EXHAUSTED');
  assert.equal(e.grpcCode, 8);
  assert.equal(e.kind, 'resource_exhausted');
  assert.equal(e.message, 'cloud budget spent');
  assert.equal(e.details, 'cloud budget spent');
  assert.equal(e.name, 'BudgetExhausted');
});

test('RESOURCE_EXHAUSTED with vra-error client_quota_exhausted → BudgetExhausted', () => {
  const e = fromGrpcError(serviceError(grpc.status.RESOURCE_EXHAUSTED, 'day quota spent', { 'vra-error': 'client_quota_exhausted' }));
  assert.ok(e instanceof BudgetExhausted);
  assert.equal(e.kind, 'client_quota_exhausted');
});

test('RESOURCE_EXHAUSTED otherwise (overloaded, queue_full, no trailer) → Overloaded', () => {
  for (const trailers of [{ 'vra-error': 'overloaded' }, { 'vra-error': 'queue_full' }, {}]) {
    const e = fromGrpcError(serviceError(grpc.status.RESOURCE_EXHAUSTED, 'shed', trailers));
    assert.ok(e instanceof Overloaded, JSON.stringify(trailers));
    assert.ok(e instanceof ResourceExhausted);
    assert.ok(!(e instanceof BudgetExhausted));
    assert.equal(e.name, 'Overloaded');
  }
});

test('INVALID_ARGUMENT → InvalidArgument; field from the trailer, else from the message prefix', () => {
  const a = fromGrpcError(
    serviceError(grpc.status.INVALID_ARGUMENT, 'report_id: must not be empty', {
      'vra-error': 'invalid_argument',
      'vra-error-field': 'report_id',
    }),
  );
  assert.ok(a instanceof InvalidArgument);
  assert.equal(a.field, 'report_id');
  const b = fromGrpcError(serviceError(grpc.status.INVALID_ARGUMENT, 'options.max_tokens: must be at most 32768'));
  assert.equal(b.field, 'options.max_tokens');
  const c = fromGrpcError(serviceError(grpc.status.INVALID_ARGUMENT, 'bad request'));
  assert.equal(c.field, null);
  const d = fromGrpcError(serviceError(grpc.status.INVALID_ARGUMENT, 'prompt: x', { 'vra-error-field': 'system_prompt' }));
  assert.equal(d.field, 'system_prompt', 'the trailer wins over the message');
});

test('UNAUTHENTICATED, UNAVAILABLE, DEADLINE_EXCEEDED map to their classes', () => {
  assert.ok(fromGrpcError(serviceError(grpc.status.UNAUTHENTICATED, 'missing or invalid credentials')) instanceof Unauthenticated);
  const u = fromGrpcError(serviceError(grpc.status.UNAVAILABLE, 'every provider failed', { 'vra-error': 'unavailable' }));
  assert.ok(u instanceof Unavailable);
  assert.equal(u.kind, 'unavailable');
  assert.ok(fromGrpcError(serviceError(grpc.status.DEADLINE_EXCEEDED, 'deadline')) instanceof DeadlineExceeded);
});

test('anything else → GatewayError carrying the code name and the gateway message', () => {
  const e = fromGrpcError(serviceError(grpc.status.INTERNAL, 'task panicked', { 'vra-error': 'internal' }));
  assert.equal(e.constructor, GatewayError);
  assert.equal(e.code, 'INTERNAL');
  assert.equal(e.message, 'task panicked');
  assert.equal(e.metadata['vra-error'], 'internal');
  assert.equal(fromGrpcError(serviceError(99, 'weird')).code, 'UNKNOWN');
  assert.equal(fromGrpcError(serviceError(grpc.status.PERMISSION_DENIED, 'no')).code, 'PERMISSION_DENIED');
});

test('non-gRPC errors and GatewayErrors pass through unchanged', () => {
  const plain = new TypeError('x');
  assert.equal(fromGrpcError(plain), plain);
  const g = new Unavailable('UNAVAILABLE', 'y');
  assert.equal(fromGrpcError(g), g);
});
