// Typed errors. `fromGrpcError` is the one place where a gRPC status becomes an SDK error.
import grpc from '@grpc/grpc-js';

/** gRPC status code number → name (`3` → `"INVALID_ARGUMENT"`). */
const CODE_NAMES = Object.freeze(
  Object.fromEntries(
    Object.entries(grpc.status)
      .filter(([, v]) => typeof v === 'number')
      .map(([k, v]) => [v, k]),
  ),
);

/** `vra-error` kinds that mean a budget (report or client day quota) is spent. */
const BUDGET_KINDS = new Set(['resource_exhausted', 'client_quota_exhausted']);

/**
 * Every failed call rejects with a GatewayError (or a subclass).
 *
 * - `code`: the gRPC status code name, e.g. `"INVALID_ARGUMENT"`.
 * - `message` / `details`: the gateway's message, verbatim (the SDK adds nothing to it).
 * - `kind`: the gateway's machine-readable `vra-error` trailer (`"resource_exhausted"`, ...) or `null`.
 * - `grpcCode`: the numeric status code.
 * - `metadata`: the trailers as a plain object of strings (binary trailers omitted).
 */
export class GatewayError extends Error {
  /**
   * @param {string} code status code name
   * @param {string} message the gateway's message
   * @param {{kind?: string|null, metadata?: Record<string,string>, cause?: unknown}} [opts]
   */
  constructor(code, message, opts = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = new.target.name;
    this.code = code;
    this.grpcCode = /** @type {number} */ (grpc.status[/** @type {keyof typeof grpc.status} */ (code)] ?? 2);
    this.details = message;
    this.kind = opts.kind ?? null;
    this.metadata = opts.metadata ?? {};
  }
}

/** `INVALID_ARGUMENT`; `field` names the invalid request field (wire name, e.g. `"report_id"`) or is `null`. */
export class InvalidArgument extends GatewayError {
  /** @param {string} code @param {string} message @param {any} [opts] */
  constructor(code, message, opts = {}) {
    super(code, message, opts);
    this.field = opts.field ?? fieldFromMessage(message);
  }
}

/** `UNAUTHENTICATED`: missing or invalid credentials. */
export class Unauthenticated extends GatewayError {}

/** `RESOURCE_EXHAUSTED`. */
export class ResourceExhausted extends GatewayError {}

/** The report's cloud budget or the client's day quota is spent, and the secondary is cloud tier. */
export class BudgetExhausted extends ResourceExhausted {}

/** The gateway shed load; retry later. */
export class Overloaded extends ResourceExhausted {}

/** `UNAVAILABLE`: every provider failed, a stream broke, or the gateway is unreachable. */
export class Unavailable extends GatewayError {}

/** `DEADLINE_EXCEEDED`. */
export class DeadlineExceeded extends GatewayError {}

/**
 * `NOT_FOUND` with kind `not_cached`: `cache: 'ONLY_IF_CACHED'` and the response cache holds no
 * answer (nothing was sent upstream).
 */
export class NotCached extends GatewayError {}

/** An outline that cannot be compiled (missing title, bad section type, duplicate id, ...). */
export class OutlineError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'OutlineError';
  }
}

/**
 * The field named by an INVALID_ARGUMENT message of the form `report_id: must not be empty`.
 * @param {string} message
 * @returns {string|null}
 */
export function fieldFromMessage(message) {
  const m = /^([A-Za-z_][A-Za-z0-9_.]*):\s/.exec(message || '');
  return m ? m[1] : null;
}

/** @param {any} metadata grpc Metadata or undefined */
function trailers(metadata) {
  /** @type {Record<string,string>} */
  const out = {};
  if (!metadata || typeof metadata.getMap !== 'function') return out;
  for (const [k, v] of Object.entries(metadata.getMap())) {
    if (typeof v === 'string') out[k] = v;
  }
  return out;
}

/**
 * Maps a status (a grpc-js ServiceError, or any object with `code`, `details` and `metadata`)
 * to the SDK's typed error. Errors that are already GatewayErrors pass through; anything
 * without a numeric `code` is returned unchanged.
 * @param {any} err
 * @returns {any}
 */
export function fromGrpcError(err) {
  if (err instanceof GatewayError || !err || typeof err.code !== 'number') return err;
  const code = CODE_NAMES[err.code] ?? 'UNKNOWN';
  const message = typeof err.details === 'string' ? err.details : String(err.message ?? '');
  const metadata = trailers(err.metadata);
  const kind = metadata['vra-error'] ?? null;
  const opts = { kind, metadata, cause: err };
  switch (code) {
    case 'INVALID_ARGUMENT':
      return new InvalidArgument(code, message, { ...opts, field: metadata['vra-error-field'] || null });
    case 'UNAUTHENTICATED':
      return new Unauthenticated(code, message, opts);
    case 'RESOURCE_EXHAUSTED':
      return BUDGET_KINDS.has(/** @type {string} */ (kind))
        ? new BudgetExhausted(code, message, opts)
        : new Overloaded(code, message, opts);
    case 'UNAVAILABLE':
      return new Unavailable(code, message, opts);
    case 'DEADLINE_EXCEEDED':
      return new DeadlineExceeded(code, message, opts);
    case 'NOT_FOUND':
      return kind === 'not_cached' ? new NotCached(code, message, opts) : new GatewayError(code, message, opts);
    default:
      return new GatewayError(code, message, opts);
  }
}
