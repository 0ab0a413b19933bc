// Type declarations of @vra/gateway-client. Keep in step with index.js and src/.

/// <reference types="node" />

// ---------------------------------------------------------------------------------------------
// Plain values

/** The phase of the report compilation a call belongs to. */
export declare const Phase: Readonly<{ DRAFT: 'DRAFT'; EXPAND: 'EXPAND'; REFINE: 'REFINE'; ABSTRACT: 'ABSTRACT' }>;
export type Phase = (typeof Phase)[keyof typeof Phase];

/** The kind of section being written; DRAFT routing depends on it. */
export declare const SectionType: Readonly<{
  INTRODUCTION: 'INTRODUCTION';
  CONCLUSION: 'CONCLUSION';
  ANALYSIS: 'ANALYSIS';
  METHODOLOGY: 'METHODOLOGY';
  IMPLEMENTATION: 'IMPLEMENTATION';
  OTHER: 'OTHER';
}>;
export type SectionType = (typeof SectionType)[keyof typeof SectionType];

/** Which configured provider served (or would serve) a call. */
export declare const Tier: Readonly<{ PRIMARY: 'PRIMARY'; SECONDARY: 'SECONDARY' }>;
export type Tier = (typeof Tier)[keyof typeof Tier];

/** Why the secondary served a call the matrix sent to the primary; `NONE` when it did not. */
export declare const FallbackReason: Readonly<{
  NONE: 'NONE';
  COST_LIMIT: 'COST_LIMIT';
  PRIMARY_ERROR: 'PRIMARY_ERROR';
  CIRCUIT_OPEN: 'CIRCUIT_OPEN';
  LEDGER_UNAVAILABLE: 'LEDGER_UNAVAILABLE';
  CLIENT_QUOTA: 'CLIENT_QUOTA';
}>;
export type FallbackReason = (typeof FallbackReason)[keyof typeof FallbackReason];

/** How a call uses the gateway's response cache (`DEFAULT`: look up, and store the answer). */
export declare const CacheMode: Readonly<{
  DEFAULT: 'DEFAULT';
  NO_CACHE: 'NO_CACHE';
  NO_STORE: 'NO_STORE';
  ONLY_IF_CACHED: 'ONLY_IF_CACHED';
}>;
export type CacheMode = (typeof CacheMode)[keyof typeof CacheMode];

/** Whether a call's answer came from the response cache; `OFF` without a cache. */
export declare const CacheStatus: Readonly<{ OFF: 'OFF'; MISS: 'MISS'; HIT: 'HIT'; BYPASS: 'BYPASS' }>;
export type CacheStatus = (typeof CacheStatus)[keyof typeof CacheStatus];

/** The phases in compilation order. */
export declare const PHASES: readonly Phase[];

/** Enum inputs accept the constants, any-case names (`"draft"`) and full proto names. */
export type PhaseInput = Phase | string;
export type SectionTypeInput = SectionType | string;

export interface Route {
  /** `null` only if the gateway left it unspecified. */
  tier: Tier | null;
  /** Configured provider name, e.g. `"openai"`, `"local"`. */
  provider: string;
  model: string;
  /** True when the provider is cloud tier (its requests count toward the budget). */
  cloud: boolean;
  /** The routing-matrix row that decided, e.g. `"refine-primary"`. */
  rule: string;
  fallbackReason: FallbackReason;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
  /**
   * At least one count is an estimate: the upstream did not report it (e.g. a stream without
   * usage). In `ReportUsage`: some of the calls counted were estimated.
   */
  estimated: boolean;
  /** The answer came from the response cache: the counts are the original call's. */
  cached: boolean;
}

export interface Budget {
  cloudCallsUsed: number;
  cloudCallsLimit: number;
  /** No cloud call is left: the call budget is spent, or the cost cap has no room. */
  exhausted: boolean;
  /** The report's settled cloud cost in USD (calls whose model has a price). */
  cloudCostUsedUsd: number;
  /** Worst-case cost held by cloud calls in flight (only with a cost cap). */
  cloudCostReservedUsd: number;
  /** The dollar cap (`MAX_CLOUD_COST_USD`); `null` when there is none. Settled cost never exceeds it. */
  cloudCostLimitUsd: number | null;
}

/** The client's cloud requests in the current UTC day; present only with a day quota. */
export interface ClientQuota {
  used: number;
  limit: number;
}

export interface Result {
  text: string;
  route: Route;
  usage: Usage;
  budget: Budget;
  /** Every upstream HTTP request the call made, all providers together. */
  attempts: number;
  finishReason: string;
  /**
   * The call's cost in USD (its tokens times its model's price). `null` when the model has no
   * price (unknown, not free); `0` for a local model without a price, and for a cache hit.
   */
  costUsd: number | null;
  /** `HIT`: answered from the response cache (nothing sent upstream, no budget spent). */
  cacheStatus: CacheStatus | string;
}

export interface RouteDecision {
  route: Route;
  budget: Budget;
  clientQuota: ClientQuota | null;
}

/** What a report cost, and what hybrid routing saved (USD). */
export interface ReportCost {
  /** Cost of the calls answered by cloud-tier providers. */
  cloudUsd: number;
  /** Cost of the calls answered by local-tier providers. */
  localUsd: number;
  /** `cloudUsd + localUsd`. */
  totalUsd: number;
  /** The same calls' tokens priced at the primary model; `null` when it has no price. */
  allCloudUsd: number | null;
  /** `allCloudUsd - totalUsd`; `null` when `allCloudUsd` is. */
  savingsUsd: number | null;
  /** Answered calls whose model has no price: not in the sums above, which are then lower bounds. */
  unpricedCalls: number;
  /**
   * Charged (under a cost cap) for cloud attempts without an answer that may have been billed —
   * a timeout, a broken or dropped call — at their worst case; part of `cloudUsd`.
   */
  abandonedUsd: number;
}

/** Calls, tokens and cost of one phase answered by one tier. */
export interface PhaseUsage {
  /** `null` only if the gateway sends a phase this SDK does not know. */
  phase: Phase | null;
  /** The tier that answered; `null` only if the gateway left it unspecified. */
  tier: Tier | null;
  calls: number;
  usage: Usage;
  /** Cost of these calls in USD (priced calls only). */
  costUsd: number;
  /** Calls of this phase answered from the cache with this tier's answer (not in `calls`). */
  cachedCalls: number;
  /** What those would have cost upstream. */
  cacheSavedUsd: number;
}

export interface ReportUsage {
  reportId: string;
  budget: Budget;
  primaryCalls: number;
  secondaryCalls: number;
  fallbacks: number;
  cloudUsage: Usage;
  localUsage: Usage;
  clientQuota: ClientQuota | null;
  /** What the report cost, and what hybrid routing saved. */
  cost: ReportCost;
  /** Calls, tokens and cost per phase and answering tier; only cells with calls. */
  phases: PhaseUsage[];
  /** Calls answered from the response cache (in none of the counts above). */
  cachedCalls: number;
  /** What those calls would have cost upstream, at their models' prices. */
  cacheSavedUsd: number;
}

/** Events of `generateStream`: text deltas, then exactly one result. */
export type StreamEvent = { type: 'delta'; text: string } | { type: 'result'; result: Result };

// ---------------------------------------------------------------------------------------------
// Client

export interface TlsOptions {
  /** Root CA (PEM as Buffer, PEM text or file path). Omitted: the system roots. */
  ca?: Buffer | string;
  /** Client certificate chain for mTLS (with `key`). */
  cert?: Buffer | string;
  /** Client private key for mTLS (with `cert`). */
  key?: Buffer | string;
  /** Name to verify the server certificate against, when it differs from the target host. */
  serverName?: string;
}

export interface GatewayClientOptions {
  /**
   * `host:port` (or give it as the constructor's first argument). Default: `VRA_GATEWAY_TARGET`,
   * else `127.0.0.1:50051`.
   */
  target?: string;
  /** Bearer token (sent as `authorization: Bearer …`). Default: `VRA_TOKEN`. */
  token?: string | null;
  /** Default deadline of each call, in milliseconds. Default 120000. */
  timeoutMs?: number;
  /** TLS (`true`: system roots). Without it the channel is plaintext. */
  tls?: TlsOptions | true | null;
  /** Extra grpc-js channel options. */
  channelOptions?: Record<string, string | number>;
}

export interface CallOptions {
  /** Deadline of this call in milliseconds (overrides the client's `timeoutMs`). */
  timeoutMs?: number;
  /** Aborting cancels the call; it then rejects with a GatewayError of code `CANCELLED`. */
  signal?: AbortSignal;
}

export interface GenerateRequest extends CallOptions {
  reportId: string;
  sectionId: string;
  phase: PhaseInput;
  /** The prompt; may be empty when `messages` is given. */
  prompt: string;
  sectionType?: SectionTypeInput;
  systemPrompt?: string;
  maxTokens?: number;
  temperature?: number;
  stop?: string | string[];
  topP?: number;
  seed?: number;
  /** A whole conversation instead of `prompt` and `systemPrompt` (leave those empty). */
  messages?: ChatMessage[];
  /** The response cache: `NO_CACHE`, `NO_STORE`, `ONLY_IF_CACHED` (a miss rejects with `NotCached`). */
  cache?: CacheMode | string;
  /** Accept a cached answer only if it is at most this old (0: never). */
  maxAgeSecs?: number;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface ResolveRouteRequest extends CallOptions {
  reportId: string;
  phase: PhaseInput;
  sectionType?: SectionTypeInput;
}

export declare const DEFAULT_TARGET: string;
export declare const DEFAULT_TIMEOUT_MS: number;
export declare const PROTO_ROOT: string;
export declare const PROTO_FILE: string;

export declare class GatewayClient {
  /** `new GatewayClient()` or `new GatewayClient({ target: 'host:port', ... })`. */
  constructor(options?: GatewayClientOptions);
  /**
   * `new GatewayClient('host:port')` or `new GatewayClient('host:port', { ... })`: the same as
   * `{ ...options, target }`. A different `options.target` as well is a TypeError.
   */
  constructor(target: string, options?: GatewayClientOptions);
  readonly target: string;
  readonly timeoutMs: number;
  generate(request: GenerateRequest): Promise<Result>;
  generateStream(request: GenerateRequest): AsyncGenerator<StreamEvent, void, undefined>;
  resolveRoute(request: ResolveRouteRequest): Promise<RouteDecision>;
  reportUsage(reportId: string, options?: CallOptions): Promise<ReportUsage>;
  close(): void;
}

// ---------------------------------------------------------------------------------------------
// Errors

export declare class GatewayError extends Error {
  constructor(
    code: string,
    message: string,
    opts?: { kind?: string | null; metadata?: Record<string, string>; cause?: unknown },
  );
  /** gRPC status code name, e.g. `"INVALID_ARGUMENT"`. */
  readonly code: string;
  /** Numeric gRPC status code. */
  readonly grpcCode: number;
  /** The gateway's message (same as `message`). */
  readonly details: string;
  /** The `vra-error` trailer (`"resource_exhausted"`, `"overloaded"`, ...), or `null`. */
  readonly kind: string | null;
  /** The trailers, as strings. */
  readonly metadata: Record<string, string>;
}
export declare class InvalidArgument extends GatewayError {
  constructor(
    code: string,
    message: string,
    opts?: { kind?: string | null; metadata?: Record<string, string>; cause?: unknown; field?: string | null },
  );
  /** The invalid field (wire name, e.g. `"report_id"`), or `null`. */
  readonly field: string | null;
}
export declare class Unauthenticated extends GatewayError {}
export declare class ResourceExhausted extends GatewayError {}
export declare class BudgetExhausted extends ResourceExhausted {}
export declare class Overloaded extends ResourceExhausted {}
export declare class Unavailable extends GatewayError {}
export declare class DeadlineExceeded extends GatewayError {}
/** `NOT_FOUND` (`not_cached`): `cache: 'ONLY_IF_CACHED'` and no cached answer; nothing was sent upstream. */
export declare class NotCached extends GatewayError {}
export declare class OutlineError extends Error {}

/** Maps a grpc-js status error (`code`, `details`, `metadata`) to the SDK's typed error. */
export declare function fromGrpcError(err: unknown): unknown;

// ---------------------------------------------------------------------------------------------
// Report compiler

export interface OutlineSection {
  id: string;
  title: string;
  type: SectionType;
  brief: string;
}

export interface Outline {
  title: string;
  reportId?: string;
  sections: OutlineSection[];
}

/** An outline as written by hand (YAML/JSON): any-case types, optional brief, `report_id` or `reportId`. */
export interface OutlineInput {
  title: string;
  reportId?: string;
  report_id?: string;
  sections: Array<{ id: string | number; title: string; type: SectionTypeInput; brief?: string | null }>;
}

export type Templates = Partial<Record<Phase, string>>;

export interface ReportCompilerOptions {
  /** Default: the outline's, else a slug of the title plus 8 random hex digits. */
  reportId?: string;
  /** Prompt templates per phase; see DEFAULT_TEMPLATES for the placeholders. */
  templates?: Templates;
  systemPrompt?: string;
  /** Max tokens for every phase, or per phase. */
  maxTokens?: number | Partial<Record<Phase, number>>;
  /** Sections compiled in parallel. Default 2. */
  concurrency?: number;
  /** Use generateStream and report deltas through onDelta. */
  stream?: boolean;
  onDelta?: (sectionId: string, phase: Phase, text: string) => void;
  onProgress?: (record: CallRecord) => void;
  /** Deadline of each call, in milliseconds (default: the client's). */
  timeoutMs?: number;
  /** Pause before the one retry of a failed call. Default 250. */
  retryDelayMs?: number;
}

export interface CallRecord {
  sectionId: string;
  phase: Phase;
  tier: Tier | null;
  provider: string;
  model: string;
  rule: string;
  fallbackReason: FallbackReason;
  attempts: number;
  inputTokens: number;
  outputTokens: number;
  latencyMs: number;
  streamed: boolean;
  /** The call's cost in USD; `null` when its model has no price (unknown). */
  costUsd: number | null;
  /** The token counts are (partly) estimates; the upstream did not report them. */
  estimated: boolean;
  /** Answered from the gateway's response cache (the token counts are the original call's). */
  cached: boolean;
}

export interface Failure {
  /** The section id, or `"abstract"` for the ABSTRACT call. */
  sectionId: string;
  phase: Phase;
  error: GatewayError | Error;
}

export interface Report {
  reportId: string;
  markdown: string;
  /** One per successful call, in outline order then phase order; the abstract last. */
  records: CallRecord[];
  failures: Failure[];
  /** The final usage, or `null` when it could not be fetched. */
  usage: ReportUsage | null;
}

export declare const ABSTRACT_SECTION_ID: 'abstract';
export declare const DEFAULT_TEMPLATES: Readonly<Record<Phase, string>>;

export declare class ReportCompiler {
  constructor(client: GatewayClient, outline: OutlineInput | Outline, options?: ReportCompilerOptions);
  readonly reportId: string;
  readonly outline: Outline;
  run(): Promise<Report>;
}

export declare function loadOutline(path: string): Promise<Outline>;
export declare function normaliseOutline(raw: unknown): Outline;
export declare function renderTemplate(template: string, values: Record<string, string>): string;
export declare function defaultReportId(title: string): string;
