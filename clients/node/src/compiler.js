// ReportCompiler: DRAFT → EXPAND → REFINE per section, then one ABSTRACT, through the gateway.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import YAML from 'yaml';

import { InvalidArgument, OutlineError, Unauthenticated } from './errors.js';
import { Phase, SectionType, normaliseEnum } from './types.js';

/** The section id the ABSTRACT call carries (and its failures report). */
export const ABSTRACT_SECTION_ID = 'abstract';

/**
 * The default prompt templates. Placeholders: `{report_title}`, `{section_id}`,
 * `{section_title}`, `{section_type}`, `{brief}`, `{previous}` (the previous phase's text;
 * empty for DRAFT), `{sections}` (ABSTRACT only). `{{` and `}}` are literal braces.
 */
export const DEFAULT_TEMPLATES = Object.freeze({
  DRAFT:
    'Write a first draft of the section "{section_title}" ({section_type}) of the technical report ' +
    '"{report_title}".\nBrief: {brief}',
  EXPAND:
    'Expand the following draft of the section "{section_title}" of the technical report ' +
    '"{report_title}" with detail, evidence and examples. Keep its structure.\nBrief: {brief}\n\n' +
    'Draft:\n{previous}',
  REFINE:
    'Refine the following section "{section_title}" of the technical report "{report_title}": ' +
    'tighten the wording, fix errors and keep every fact.\n\nSection:\n{previous}',
  ABSTRACT:
    'Write the abstract (one paragraph) of the technical report "{report_title}" from its ' +
    'sections:\n\n{sections}',
});

const PLACEHOLDERS = new Set([
  'report_title',
  'section_id',
  'section_title',
  'section_type',
  'brief',
  'previous',
  'sections',
]);

const TEMPLATE_TOKEN = /\{\{|\}\}|\{([^{}]*)\}/g;

/**
 * Checks a template's placeholders; throws a TypeError naming the first unknown one.
 * @param {string} phase @param {string} template
 */
function checkTemplate(phase, template) {
  if (typeof template !== 'string') throw new TypeError(`templates.${phase}: must be a string`);
  for (const m of template.matchAll(TEMPLATE_TOKEN)) {
    if (m[1] !== undefined && !PLACEHOLDERS.has(m[1])) {
      throw new TypeError(`templates.${phase}: unknown placeholder {${m[1]}}`);
    }
  }
}

/**
 * Fills `{name}` placeholders (`{{`/`}}` are literal braces).
 * @param {string} template @param {Record<string,string>} values
 */
export function renderTemplate(template, values) {
  return template.replace(TEMPLATE_TOKEN, (tok, name) => {
    if (tok === '{{') return '{';
    if (tok === '}}') return '}';
    return values[name] ?? '';
  });
}

/**
 * A slug of the title plus 8 random hex digits, e.g. `hybrid-llm-routing-3fa9c2d1`.
 * @param {string} title
 */
export function defaultReportId(title) {
  const slug = String(title)
    .normalize('NFKD')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 48)
    .replace(/-+$/, '');
  return `${slug || 'report'}-${randomBytes(4).toString('hex')}`;
}

/**
 * Validates and normalises an outline (`title`, optional `report_id`/`reportId`, `sections`
 * with `id`, `title`, `type` in any case and an optional `brief`).
 * @param {any} raw
 * @returns {import('../index.js').Outline}
 * @throws {OutlineError}
 */
export function normaliseOutline(raw) {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new OutlineError('outline: expected a mapping');
  if (typeof raw.title !== 'string' || !raw.title.trim()) throw new OutlineError('outline.title: must be a non-empty string');
  if (!Array.isArray(raw.sections) || raw.sections.length === 0) {
    throw new OutlineError('outline.sections: must be a non-empty list');
  }
  const reportId = raw.reportId ?? raw.report_id;
  if (reportId !== undefined && reportId !== null && (typeof reportId !== 'string' || !reportId)) {
    throw new OutlineError('outline.report_id: must be a non-empty string');
  }
  const seen = new Set([ABSTRACT_SECTION_ID]);
  const sections = raw.sections.map((/** @type {any} */ s, /** @type {number} */ i) => {
    const where = `outline.sections[${i}]`;
    if (!s || typeof s !== 'object') throw new OutlineError(`${where}: expected a mapping`);
    const id = typeof s.id === 'number' ? String(s.id) : s.id;
    if (typeof id !== 'string' || !id) throw new OutlineError(`${where}.id: must be a non-empty string`);
    if (seen.has(id)) throw new OutlineError(`${where}.id: duplicate or reserved id "${id}"`);
    seen.add(id);
    if (typeof s.title !== 'string' || !s.title) throw new OutlineError(`${where}.title: must be a non-empty string`);
    let type;
    try {
      type = normaliseEnum('sectionType', SectionType, s.type);
    } catch {
      type = undefined;
    }
    if (!type) {
      throw new OutlineError(`${where}.type: must be one of ${Object.keys(SectionType).join(', ')} (any case)`);
    }
    if (s.brief !== undefined && s.brief !== null && typeof s.brief !== 'string') {
      throw new OutlineError(`${where}.brief: must be a string`);
    }
    return { id, title: s.title, type, brief: s.brief ?? '' };
  });
  return { title: raw.title, ...(reportId ? { reportId } : {}), sections };
}

/**
 * Reads an outline file: YAML (`.yaml`, `.yml`) or JSON (`.json`; other extensions are
 * parsed as YAML, which accepts JSON too).
 * @param {string} path
 * @returns {Promise<import('../index.js').Outline>}
 */
export async function loadOutline(path) {
  const text = await readFile(path, 'utf8');
  let raw;
  try {
    raw = extname(path).toLowerCase() === '.json' ? JSON.parse(text) : YAML.parse(text);
  } catch (e) {
    throw new OutlineError(`${path}: ${/** @type {Error} */ (e).message}`);
  }
  return normaliseOutline(raw);
}

/** Wraps an exception thrown by a user callback, so that it is not taken for a failed call. */
class CallbackFailure {
  /** @param {unknown} error */
  constructor(error) {
    this.error = error;
  }
}

/**
 * Calls a user callback; what it throws ends the compilation (run() rejects with it).
 * @template {any[]} A
 * @param {((...args: A) => void) | undefined} fn @param {A} args
 */
function callback(fn, ...args) {
  if (!fn) return;
  try {
    fn(...args);
  } catch (e) {
    throw new CallbackFailure(e);
  }
}

/**
 * A per-phase option key (any case) → the phase name.
 * @param {string} option @param {string} key
 * @returns {string}
 */
function phaseKey(option, key) {
  try {
    return /** @type {string} */ (normaliseEnum('phase', Phase, key));
  } catch {
    throw new TypeError(`${option}: unknown phase "${key}" (one of ${Object.keys(Phase).join(', ')})`);
  }
}

/** @param {unknown} err */
function retryable(err) {
  return !(err instanceof InvalidArgument || err instanceof Unauthenticated);
}

/** @param {number} ms */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Compiles a report outline through the gateway. See clients/README.md for the contract.
 *
 * ```js
 * const report = await new ReportCompiler(client, await loadOutline('outline.yaml')).run();
 * ```
 */
export class ReportCompiler {
  /**
   * @param {import('./client.js').GatewayClient} client
   * @param {any} outline an outline object (normalised here)
   * @param {import('../index.js').ReportCompilerOptions} [options]
   */
  constructor(client, outline, options = {}) {
    this.client = client;
    this.outline = normaliseOutline(outline);
    this.reportId = options.reportId || this.outline.reportId || defaultReportId(this.outline.title);
    /** @type {Record<string,string>} */
    this.templates = { ...DEFAULT_TEMPLATES };
    for (const [k, v] of Object.entries(options.templates || {})) {
      const phase = phaseKey('templates', k);
      checkTemplate(phase, /** @type {string} */ (v));
      this.templates[phase] = /** @type {string} */ (v);
    }
    this.systemPrompt = options.systemPrompt;
    /** @type {Record<string, number|undefined>} */
    this.maxTokens = {};
    if (typeof options.maxTokens === 'number') {
      for (const p of Object.keys(Phase)) this.maxTokens[p] = options.maxTokens;
    } else if (options.maxTokens) {
      for (const [k, v] of Object.entries(options.maxTokens)) {
        this.maxTokens[phaseKey('maxTokens', k)] = v;
      }
    }
    this.concurrency = options.concurrency ?? 2;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) {
      throw new TypeError('concurrency: must be a positive integer');
    }
    this.stream = Boolean(options.stream);
    this.onDelta = options.onDelta;
    this.onProgress = options.onProgress;
    this.timeoutMs = options.timeoutMs;
    this.retryDelayMs = options.retryDelayMs ?? 250;
  }

  /**
   * Runs the compilation. Never rejects because of a failed call: failures are reported in
   * `report.failures` and as placeholders in the Markdown. It rejects only with what an
   * `onDelta`/`onProgress` callback threw (that call is not retried).
   * @returns {Promise<import('../index.js').Report>}
   */
  async run() {
    try {
      return await this.#run();
    } catch (e) {
      throw e instanceof CallbackFailure ? e.error : e;
    }
  }

  async #run() {
    const { sections } = this.outline;
    /** @type {Map<string, string>} refined text per section id */
    const refined = new Map();
    /** @type {Map<string, Array<any>>} records per section id, in phase order */
    const recordsBySection = new Map();
    /** @type {Array<any>} */
    const failures = [];

    let next = 0;
    const worker = async () => {
      while (next < sections.length) {
        const section = sections[next++];
        /** @type {any[]} */
        const records = [];
        recordsBySection.set(section.id, records);
        let previous = '';
        for (const phase of [Phase.DRAFT, Phase.EXPAND, Phase.REFINE]) {
          const prompt = renderTemplate(this.templates[phase], this.#values(section, previous, ''));
          const out = await this.#call(section.id, section.type, phase, prompt);
          if (!out.ok) {
            failures.push({ sectionId: section.id, phase, error: out.error });
            break;
          }
          records.push(out.record);
          previous = out.text;
          if (phase === Phase.REFINE) refined.set(section.id, out.text);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, sections.length) }, worker));

    const sectionsText = sections
      .filter((s) => refined.has(s.id))
      .map((s) => `## ${s.title}\n\n${refined.get(s.id)}`)
      .join('\n\n');
    const abstractPrompt = renderTemplate(
      this.templates.ABSTRACT,
      this.#values({ id: ABSTRACT_SECTION_ID, title: 'Abstract', type: SectionType.OTHER, brief: '' }, '', sectionsText),
    );
    let abstract = null;
    const abs = await this.#call(ABSTRACT_SECTION_ID, SectionType.OTHER, Phase.ABSTRACT, abstractPrompt);
    if (abs.ok) abstract = abs.text;
    else failures.push({ sectionId: ABSTRACT_SECTION_ID, phase: Phase.ABSTRACT, error: abs.error });

    const records = sections.flatMap((s) => recordsBySection.get(s.id) || []);
    if (abs.ok) records.push(abs.record);
    failures.sort((a, b) => this.#order(a.sectionId) - this.#order(b.sectionId));

    let usage = null;
    try {
      usage = await this.client.reportUsage(this.reportId, { timeoutMs: this.timeoutMs });
    } catch {
      usage = null; // the calls' failures already say why; usage is best effort
    }
    return {
      reportId: this.reportId,
      markdown: this.#markdown(abstract, refined, failures),
      records,
      failures,
      usage,
    };
  }

  /** @param {string} sectionId */
  #order(sectionId) {
    const i = this.outline.sections.findIndex((s) => s.id === sectionId);
    return i < 0 ? this.outline.sections.length : i;
  }

  /**
   * @param {{id: string, title: string, type: string, brief: string}} section
   * @param {string} previous @param {string} sections
   */
  #values(section, previous, sections) {
    return {
      report_title: this.outline.title,
      section_id: section.id,
      section_title: section.title,
      section_type: section.type,
      brief: section.brief,
      previous,
      sections,
    };
  }

  /**
   * One phase of one section, retried once unless the error is not retryable.
   * @param {string} sectionId @param {string} sectionType
   * @param {import('../index.js').Phase} phase @param {string} prompt
   * @returns {Promise<{ok: true, text: string, record: any} | {ok: false, error: Error}>}
   */
  async #call(sectionId, sectionType, phase, prompt) {
    /** @type {any} */
    let error;
    for (let attempt = 0; attempt < 2; attempt++) {
      if (attempt > 0) await sleep(this.retryDelayMs);
      try {
        return { ok: true, ...(await this.#once(sectionId, sectionType, phase, prompt)) };
      } catch (e) {
        if (e instanceof CallbackFailure) throw e;
        error = e;
        if (!retryable(e)) break;
      }
    }
    return { ok: false, error };
  }

  /**
   * @param {string} sectionId @param {string} sectionType
   * @param {import('../index.js').Phase} phase @param {string} prompt
   */
  async #once(sectionId, sectionType, phase, prompt) {
    const request = {
      reportId: this.reportId,
      sectionId,
      sectionType,
      phase,
      prompt,
      systemPrompt: this.systemPrompt,
      maxTokens: this.maxTokens[phase],
      timeoutMs: this.timeoutMs,
    };
    const started = performance.now();
    let result;
    if (this.stream) {
      for await (const ev of this.client.generateStream(request)) {
        if (ev.type === 'delta') callback(this.onDelta, sectionId, phase, ev.text);
        else result = ev.result;
      }
    } else {
      result = await this.client.generate(request);
    }
    const r = /** @type {import('../index.js').Result} */ (result);
    const record = {
      sectionId,
      phase,
      tier: r.route.tier,
      provider: r.route.provider,
      model: r.route.model,
      rule: r.route.rule,
      fallbackReason: r.route.fallbackReason,
      attempts: r.attempts,
      inputTokens: r.usage.inputTokens,
      outputTokens: r.usage.outputTokens,
      latencyMs: Math.round(performance.now() - started),
      streamed: this.stream,
      costUsd: r.costUsd,
      estimated: r.usage.estimated,
      cached: r.usage.cached,
    };
    callback(this.onProgress, record);
    return { text: r.text, record };
  }

  /**
   * @param {string|null} abstract @param {Map<string,string>} refined @param {Array<any>} failures
   */
  #markdown(abstract, refined, failures) {
    /** @param {string} id */
    const placeholder = (id) => {
      const f = failures.find((x) => x.sectionId === id);
      const why = f ? `${f.phase} failed: ${f.error?.code ?? f.error?.name ?? 'error'}: ${f.error?.message ?? ''}` : 'not compiled';
      return `> **[section not compiled — ${why.trim()}]**`;
    };
    const parts = [`# ${this.outline.title}`, '## Abstract', abstract ?? placeholder(ABSTRACT_SECTION_ID)];
    for (const s of this.outline.sections) {
      parts.push(`## ${s.title}`, refined.get(s.id) ?? placeholder(s.id));
    }
    return parts.join('\n\n') + '\n';
  }
}
