// Plain values of the SDK surface and their conversion to and from the wire.
//
// The proto is loaded with `enums: String`, so enum values travel as their full proto names
// (`COMPILATION_PHASE_DRAFT`). The SDK exposes short names (`Phase.DRAFT === "DRAFT"`) and
// plain objects with camelCase fields; nothing protobuf-specific leaks out of this module.

/**
 * Frozen string enum: every key maps to itself.
 * @template {string} K
 * @param {K[]} names
 * @returns {Readonly<{[P in K]: P}>}
 */
function stringEnum(names) {
  /** @type {any} */
  const e = {};
  for (const n of names) e[n] = n;
  return Object.freeze(e);
}

/** The phase of the report compilation a call belongs to. */
export const Phase = stringEnum(['DRAFT', 'EXPAND', 'REFINE', 'ABSTRACT']);

/** The kind of section being written; DRAFT routing depends on it. */
export const SectionType = stringEnum([
  'INTRODUCTION',
  'CONCLUSION',
  'ANALYSIS',
  'METHODOLOGY',
  'IMPLEMENTATION',
  'OTHER',
]);

/** Which configured provider served (or would serve) a call. */
export const Tier = stringEnum(['PRIMARY', 'SECONDARY']);

/** Why a call the matrix sent to the primary was served by the secondary (`NONE`: it was not). */
export const FallbackReason = stringEnum([
  'NONE',
  'COST_LIMIT',
  'PRIMARY_ERROR',
  'CIRCUIT_OPEN',
  'LEDGER_UNAVAILABLE',
  'CLIENT_QUOTA',
]);

/** How a call uses the gateway's response cache (`DEFAULT`: look up, and store the answer). */
export const CacheMode = stringEnum(['DEFAULT', 'NO_CACHE', 'NO_STORE', 'ONLY_IF_CACHED']);

/** Whether a call's answer came from the response cache (`OFF`: the gateway runs without one). */
export const CacheStatus = stringEnum(['OFF', 'MISS', 'HIT', 'BYPASS']);

/** The phases in compilation order. */
export const PHASES = Object.freeze([Phase.DRAFT, Phase.EXPAND, Phase.REFINE, Phase.ABSTRACT]);

const WIRE_PREFIX = {
  phase: 'COMPILATION_PHASE_',
  sectionType: 'SECTION_TYPE_',
  tier: 'PROVIDER_TIER_',
  fallbackReason: 'FALLBACK_REASON_',
  cacheMode: 'CACHE_MODE_',
  cacheStatus: 'CACHE_STATUS_',
};

/**
 * Normalises a user-supplied enum value (any case, short or full proto name) to its short name.
 * `undefined`/`null`/`""` give `undefined` (the field is left unset on the wire).
 * @param {'phase'|'sectionType'|'cacheMode'} kind
 * @param {Readonly<Record<string,string>>} values
 * @param {unknown} value
 * @returns {string|undefined}
 * @throws {TypeError} when the value is not a name of the enum
 */
export function normaliseEnum(kind, values, value) {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value === 'string') {
    let name = value.trim().toUpperCase();
    if (name.startsWith(WIRE_PREFIX[kind])) name = name.slice(WIRE_PREFIX[kind].length);
    if (Object.prototype.hasOwnProperty.call(values, name)) return name;
  }
  throw new TypeError(`${kind}: must be one of ${Object.keys(values).join(', ')}`);
}

/** @param {'phase'|'sectionType'|'cacheMode'} kind @param {string|undefined} name */
export function toWire(kind, name) {
  return name === undefined ? `${WIRE_PREFIX[kind]}UNSPECIFIED` : `${WIRE_PREFIX[kind]}${name}`;
}

/**
 * Wire enum name → short name. UNSPECIFIED becomes `null`, except for the fallback reason,
 * where it means "no fallback" and becomes `"NONE"`.
 * @param {'tier'|'fallbackReason'|'phase'|'cacheStatus'} kind
 * @param {string|number|null|undefined} wire
 * @returns {any} a Tier, a FallbackReason or null
 */
function fromWire(kind, wire) {
  const prefix = WIRE_PREFIX[kind];
  const name = typeof wire === 'string' && wire.startsWith(prefix) ? wire.slice(prefix.length) : null;
  if (kind === 'fallbackReason') return name === null || name === 'UNSPECIFIED' ? 'NONE' : name;
  if (kind === 'cacheStatus') return name === null || name === 'UNSPECIFIED' ? 'OFF' : name;
  return name === null || name === 'UNSPECIFIED' ? null : name;
}

/** @param {any} r */
export function routeFromWire(r) {
  r = r || {};
  return {
    tier: fromWire('tier', r.tier),
    provider: r.provider || '',
    model: r.model || '',
    cloud: Boolean(r.cloud),
    rule: r.rule || '',
    fallbackReason: fromWire('fallbackReason', r.fallbackReason),
  };
}

/**
 * A proto3 `optional` scalar: its value when set, `null` when unset (unknown — never a default 0).
 *
 * The proto is loaded with `oneofs: true`, so every `optional` field `x` comes with a synthetic
 * oneof `_x` that names the field when it is set. With `defaults: true` an unset optional field
 * is absent (no default is filled in for oneof members); the oneof, when there, decides.
 * @param {any} m the message
 * @param {string} name the field's camelCase name
 * @returns {number|null}
 */
export function optionalNumber(m, name) {
  if (!m) return null;
  const tag = m[`_${name}`];
  if (tag != null) return tag === name && m[name] != null ? Number(m[name]) : null;
  return m[name] == null ? null : Number(m[name]);
}

/** @param {any} u */
export function usageFromWire(u) {
  return {
    inputTokens: (u && u.inputTokens) || 0,
    outputTokens: (u && u.outputTokens) || 0,
    estimated: Boolean(u && u.estimated),
    cached: Boolean(u && u.cached),
  };
}

/** @param {any} b */
export function budgetFromWire(b) {
  return {
    cloudCallsUsed: (b && b.cloudCallsUsed) || 0,
    cloudCallsLimit: (b && b.cloudCallsLimit) || 0,
    exhausted: Boolean(b && b.exhausted),
    cloudCostUsedUsd: (b && b.cloudCostUsedUsd) || 0,
    cloudCostReservedUsd: (b && b.cloudCostReservedUsd) || 0,
    cloudCostLimitUsd: optionalNumber(b, 'cloudCostLimitUsd'),
  };
}

/** @param {any} c a ReportCost */
export function reportCostFromWire(c) {
  return {
    cloudUsd: (c && c.cloudUsd) || 0,
    localUsd: (c && c.localUsd) || 0,
    totalUsd: (c && c.totalUsd) || 0,
    allCloudUsd: optionalNumber(c, 'allCloudUsd'),
    savingsUsd: optionalNumber(c, 'savingsUsd'),
    unpricedCalls: (c && c.unpricedCalls) || 0,
    abandonedUsd: (c && c.abandonedUsd) || 0,
  };
}

/** @param {any} p a PhaseUsage */
export function phaseUsageFromWire(p) {
  p = p || {};
  return {
    phase: fromWire('phase', p.phase),
    tier: fromWire('tier', p.tier),
    calls: p.calls || 0,
    usage: usageFromWire(p.usage),
    costUsd: p.costUsd || 0,
    cachedCalls: p.cachedCalls || 0,
    cacheSavedUsd: p.cacheSavedUsd || 0,
  };
}

/** A client quota is present only when the client has a day quota. @param {any} q */
export function clientQuotaFromWire(q) {
  return q ? { used: q.used || 0, limit: q.limit || 0 } : null;
}

/**
 * @param {any} m a GenerateResponse
 * @param {string} [text] overrides `m.text` (streams deliver the text as deltas)
 */
export function resultFromWire(m, text) {
  return {
    text: text !== undefined ? text : m.text || '',
    route: routeFromWire(m.route),
    usage: usageFromWire(m.usage),
    budget: budgetFromWire(m.budget),
    attempts: m.attempts || 0,
    finishReason: m.finishReason || '',
    costUsd: optionalNumber(m, 'costUsd'),
    cacheStatus: fromWire('cacheStatus', m.cacheStatus),
  };
}

/** @param {any} m a ResolveRouteResponse */
export function routeDecisionFromWire(m) {
  return {
    route: routeFromWire(m.route),
    budget: budgetFromWire(m.budget),
    clientQuota: clientQuotaFromWire(m.clientQuota),
  };
}

/** @param {any} m a GetReportUsageResponse */
export function reportUsageFromWire(m) {
  return {
    reportId: m.reportId || '',
    budget: budgetFromWire(m.budget),
    primaryCalls: m.primaryCalls || 0,
    secondaryCalls: m.secondaryCalls || 0,
    fallbacks: m.fallbacks || 0,
    cloudUsage: usageFromWire(m.cloudUsage),
    localUsage: usageFromWire(m.localUsage),
    clientQuota: clientQuotaFromWire(m.clientQuota),
    cost: reportCostFromWire(m.cost),
    phases: Array.isArray(m.phases) ? m.phases.map(phaseUsageFromWire) : [],
    cachedCalls: m.cachedCalls || 0,
    cacheSavedUsd: m.cacheSavedUsd || 0,
  };
}
