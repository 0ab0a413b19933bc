// GatewayClient: one gRPC channel to vra-gateway, with promise and async-iterator methods.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

import { GatewayError, InvalidArgument, Unavailable, fromGrpcError } from './errors.js';
import {
  CacheMode,
  Phase,
  SectionType,
  normaliseEnum,
  reportUsageFromWire,
  resultFromWire,
  routeDecisionFromWire,
  toWire,
} from './types.js';

/** The directory holding the proto shipped with the package (`proto/vra/gateway/v1/gateway.proto`). */
export const PROTO_ROOT = fileURLToPath(new URL('../proto/', import.meta.url));
/** The proto's path relative to {@link PROTO_ROOT}. */
export const PROTO_FILE = 'vra/gateway/v1/gateway.proto';

/** Default target when neither the `target` option nor `VRA_GATEWAY_TARGET` is set. */
export const DEFAULT_TARGET = '127.0.0.1:50051';
/** Default deadline of each call, in milliseconds (120 s). */
export const DEFAULT_TIMEOUT_MS = 120_000;

/** @type {any} */
let serviceCtor = null;

/**
 * Loads the proto once per process. Fields are camelCase, enums their proto names (strings),
 * unset scalars their defaults, unset messages `null`. A proto3 `optional` field `x` is absent
 * when unset and comes with a synthetic oneof `_x` naming it when set (see `optionalNumber` in
 * types.js). Exported for the tests (not part of the package's API).
 */
export function serviceConstructor() {
  if (!serviceCtor) {
    const def = protoLoader.loadSync(PROTO_FILE, {
      includeDirs: [PROTO_ROOT],
      keepCase: false,
      enums: String,
      longs: String,
      defaults: true,
      oneofs: true,
    });
    /** @type {any} */
    const pkg = grpc.loadPackageDefinition(def);
    serviceCtor = pkg.vra.gateway.v1.GatewayService;
  }
  return serviceCtor;
}

/**
 * A PEM given as a Buffer, as PEM text, or as a file path.
 * @param {Buffer|string|undefined|null} v
 * @returns {Buffer|null}
 */
function pem(v) {
  if (v === undefined || v === null) return null;
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === 'string') return v.includes('-----BEGIN') ? Buffer.from(v) : readFileSync(v);
  throw new TypeError('tls: ca, cert and key must be Buffers, PEM strings or file paths');
}

/**
 * @param {any} tls
 * @returns {{creds: grpc.ChannelCredentials, options: Record<string, string>}}
 */
function channelCredentials(tls) {
  if (!tls) return { creds: grpc.credentials.createInsecure(), options: {} };
  const t = tls === true ? {} : tls;
  const cert = pem(t.cert);
  const key = pem(t.key);
  if (Boolean(cert) !== Boolean(key)) throw new TypeError('tls: cert and key must be given together');
  const creds = grpc.credentials.createSsl(pem(t.ca), key, cert);
  /** @type {Record<string, string>} */
  const options = {};
  if (t.serverName) {
    options['grpc.ssl_target_name_override'] = t.serverName;
    options['grpc.default_authority'] = t.serverName;
  }
  return { creds, options };
}

/**
 * Converts a user enum value, rejecting bad names the way the gateway would.
 * @param {'phase'|'sectionType'} kind
 * @param {unknown} value
 */
function wireEnum(kind, value) {
  const values = kind === 'phase' ? Phase : SectionType;
  try {
    return toWire(kind, normaliseEnum(kind, values, value));
  } catch (e) {
    const field = kind === 'phase' ? 'phase' : 'section_type';
    throw new InvalidArgument('INVALID_ARGUMENT', `${field}: must be one of ${Object.keys(values).join(', ')}`, {
      field,
    });
  }
}

/**
 * The request's cache mode as a short name, `undefined` when not given.
 * @param {unknown} value
 */
function cacheMode(value) {
  try {
    return normaliseEnum('cacheMode', CacheMode, value);
  } catch {
    throw new InvalidArgument('INVALID_ARGUMENT', `cache: must be one of ${Object.keys(CacheMode).join(', ')}`, {
      field: 'options.cache',
    });
  }
}

/** @param {import('../index.js').GenerateRequest} r */
function generateRequest(r) {
  if (!r || typeof r !== 'object') throw new TypeError('generate: expected a request object');
  /** @type {any} */
  const req = {
    reportId: r.reportId ?? '',
    sectionId: r.sectionId ?? '',
    sectionType: wireEnum('sectionType', r.sectionType),
    phase: wireEnum('phase', r.phase),
    prompt: r.prompt ?? '',
    systemPrompt: r.systemPrompt ?? '',
    messages: chatMessages(r.messages),
  };
  const stop = r.stop === undefined || r.stop === null ? [] : Array.isArray(r.stop) ? r.stop : [r.stop];
  const cache = cacheMode(r.cache);
  if (
    r.maxTokens != null ||
    r.temperature != null ||
    r.topP != null ||
    r.seed != null ||
    stop.length ||
    cache !== undefined ||
    r.maxAgeSecs != null
  ) {
    req.options = { stop };
    if (r.maxTokens != null) req.options.maxTokens = r.maxTokens;
    if (r.temperature != null) req.options.temperature = r.temperature;
    if (r.topP != null) req.options.topP = r.topP;
    if (r.seed != null) req.options.seed = r.seed;
    if (cache !== undefined && cache !== CacheMode.DEFAULT) req.options.cache = toWire('cacheMode', cache);
    if (r.maxAgeSecs != null) req.options.maxAgeSecs = r.maxAgeSecs;
  }
  return req;
}

const ROLES = new Set(['system', 'user', 'assistant']);

/**
 * `[{ role: 'user', content: '...' }, ...]` as the contract's `ChatMessage`s.
 * @param {unknown} messages
 */
function chatMessages(messages) {
  if (messages === undefined || messages === null) return [];
  if (!Array.isArray(messages)) {
    throw new InvalidArgument('INVALID_ARGUMENT', 'messages: must be an array', { field: 'messages' });
  }
  return messages.map((m, i) => {
    const role = typeof m?.role === 'string' ? m.role.toLowerCase() : '';
    if (!ROLES.has(role) || typeof m?.content !== 'string') {
      throw new InvalidArgument(
        'INVALID_ARGUMENT',
        `messages: messages[${i}] must be { role: 'system' | 'user' | 'assistant', content: string }`,
        { field: 'messages' },
      );
    }
    return { role: `CHAT_ROLE_${role.toUpperCase()}`, content: m.content };
  });
}

/** @param {unknown} v */
function describeArg(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'function') return 'a function';
  return `a ${typeof v}`;
}

/** @param {unknown} v @returns {v is Record<string, any>} */
function isOptionsObject(v) {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * The constructor's arguments as one options object: `(options?)` or `(target, options?)`.
 * @param {unknown} first @param {unknown} second
 * @returns {import('../index.js').GatewayClientOptions}
 */
function clientOptions(first, second) {
  if (typeof first === 'string') {
    if (!first) throw new TypeError("GatewayClient: target must be a non-empty 'host:port' string");
    if (second === undefined) return { target: first };
    if (!isOptionsObject(second)) {
      throw new TypeError(`GatewayClient: options: expected an object after the target string, got ${describeArg(second)}`);
    }
    if (second.target !== undefined && second.target !== null && second.target !== first) {
      throw new TypeError(
        `GatewayClient: two different targets: '${first}' (first argument) and '${second.target}' (options.target); give one`,
      );
    }
    return { ...second, target: first };
  }
  if (first !== undefined && !isOptionsObject(first)) {
    throw new TypeError(
      `GatewayClient: expected a 'host:port' string or an options object as the first argument, got ${describeArg(first)}`,
    );
  }
  if (second !== undefined) {
    throw new TypeError("GatewayClient: a second argument is only accepted after a 'host:port' string target");
  }
  return first ?? {};
}

/**
 * One channel to the gateway. Methods return promises (and an async iterator for streams);
 * every failure is a {@link GatewayError} subclass.
 *
 * ```js
 * const client = new GatewayClient('127.0.0.1:50051');   // or { target: '127.0.0.1:50051', ... }
 * const r = await client.generate({ reportId: 'q3', sectionId: '1', phase: Phase.DRAFT,
 *   sectionType: SectionType.INTRODUCTION, prompt: 'Write the introduction.' });
 * console.log(r.route.tier, r.route.rule, r.text);
 * client.close();
 * ```
 */
export class GatewayClient {
  /** @type {any} */ #stub;
  /** @type {string|null} */ #token;

  /**
   * `new GatewayClient()`, `new GatewayClient(options)`, `new GatewayClient('host:port')` or
   * `new GatewayClient('host:port', options)`; the string form is `{ ...options, target }`.
   * @param {string | import('../index.js').GatewayClientOptions} [targetOrOptions]
   * @param {import('../index.js').GatewayClientOptions} [maybeOptions] only after a string target
   */
  constructor(targetOrOptions, maybeOptions) {
    const options = clientOptions(targetOrOptions, maybeOptions);
    /** The `host:port` this client talks to. */
    this.target = options.target || process.env.VRA_GATEWAY_TARGET || DEFAULT_TARGET;
    /** Default deadline of each call, in milliseconds. */
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(this.timeoutMs > 0)) throw new TypeError('timeoutMs: must be a positive number');
    this.#token = options.token ?? (process.env.VRA_TOKEN || null);
    const { creds, options: chOpts } = channelCredentials(options.tls);
    const Service = serviceConstructor();
    this.#stub = new Service(this.target, creds, { ...chOpts, ...(options.channelOptions || {}) });
  }

  /** Per-call metadata: the bearer token, when there is one. */
  #metadata() {
    const md = new grpc.Metadata();
    if (this.#token) md.set('authorization', `Bearer ${this.#token}`);
    return md;
  }

  /** @param {number|undefined} timeoutMs */
  #callOptions(timeoutMs) {
    return { deadline: Date.now() + (timeoutMs ?? this.timeoutMs) };
  }

  /**
   * @param {string} method
   * @param {any} req
   * @param {{timeoutMs?: number, signal?: AbortSignal}} opts
   * @returns {Promise<any>}
   */
  #unary(method, req, opts) {
    return new Promise((resolve, reject) => {
      if (opts.signal?.aborted) return reject(cancelled());
      const call = this.#stub[method](req, this.#metadata(), this.#callOptions(opts.timeoutMs), (/** @type {any} */ err, /** @type {any} */ res) => {
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(fromGrpcError(err));
        else resolve(res);
      });
      const onAbort = () => call.cancel();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Generates one piece of text for a report section and phase.
   * @param {import('../index.js').GenerateRequest} request
   * @returns {Promise<import('../index.js').Result>}
   */
  async generate(request) {
    const res = await this.#unary('Generate', generateRequest(request), request);
    return resultFromWire(res);
  }

  /**
   * Streams the text as it is written: `{type: 'delta', text}` events, then exactly one
   * `{type: 'result', result}` whose `result.text` is the concatenation of the deltas.
   * Breaking out of the loop cancels the call.
   * @param {import('../index.js').GenerateRequest} request
   * @returns {AsyncGenerator<import('../index.js').StreamEvent, void, undefined>}
   */
  async *generateStream(request) {
    const req = generateRequest(request);
    if (request.signal?.aborted) throw cancelled();
    const call = this.#stub.GenerateStream(req, this.#metadata(), this.#callOptions(request.timeoutMs));
    const onAbort = () => call.cancel();
    request.signal?.addEventListener('abort', onAbort, { once: true });
    let text = '';
    /** @type {any} */
    let done = null;
    let finished = false;
    try {
      try {
        for await (const msg of call) {
          if (msg.delta) {
            text += msg.delta;
            yield { type: 'delta', text: msg.delta };
          }
          if (msg.done) done = msg.done;
        }
      } catch (e) {
        throw fromGrpcError(e);
      }
      finished = true;
    } finally {
      request.signal?.removeEventListener('abort', onAbort);
      if (!finished) call.cancel();
    }
    if (!done) throw new Unavailable('UNAVAILABLE', 'stream ended without its final message', { kind: 'stream_aborted' });
    yield { type: 'result', result: resultFromWire(done, text) };
  }

  /**
   * Dry run: the route `generate` would take now. No upstream call, no budget spent.
   * @param {import('../index.js').ResolveRouteRequest} request
   * @returns {Promise<import('../index.js').RouteDecision>}
   */
  async resolveRoute(request) {
    const req = {
      reportId: request.reportId ?? '',
      sectionType: wireEnum('sectionType', request.sectionType),
      phase: wireEnum('phase', request.phase),
    };
    return routeDecisionFromWire(await this.#unary('ResolveRoute', req, request));
  }

  /**
   * Budget and call counters of one of the caller's reports (zeros for an unknown report).
   * @param {string} reportId
   * @param {import('../index.js').CallOptions} [options]
   * @returns {Promise<import('../index.js').ReportUsage>}
   */
  async reportUsage(reportId, options = {}) {
    return reportUsageFromWire(await this.#unary('GetReportUsage', { reportId: reportId ?? '' }, options));
  }

  /** Closes the channel. Calls in flight are cancelled. */
  close() {
    this.#stub.close();
  }
}

function cancelled() {
  return new GatewayError('CANCELLED', 'the call was aborted');
}
