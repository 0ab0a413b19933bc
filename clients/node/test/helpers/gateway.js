// Starts and stops real `vra-gateway demo --serve` processes for the tests.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';

import { GatewayClient } from '../../index.js';

export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const REPO_ROOT = resolve(PACKAGE_ROOT, '..', '..');
export const OUTLINE = join(REPO_ROOT, 'examples', 'outline.yaml');

/** The gateway binary: `VRA_GATEWAY_BIN`, else the repo's debug build. */
export const GATEWAY_BIN = process.env.VRA_GATEWAY_BIN || join(REPO_ROOT, 'target', 'debug', 'vra-gateway');

/** Why the gateway tests cannot run, or null. */
export const MISSING_BIN = existsSync(GATEWAY_BIN)
  ? null
  : `vra-gateway binary not found at ${GATEWAY_BIN} (build it with \`cargo build\` or set VRA_GATEWAY_BIN)`;

/**
 * `describe` for tests that need the gateway binary. Without it the suite is skipped with the
 * reason, or, when VRA_REQUIRE_SDK=1 (CI), fails with it.
 * @param {string} name @param {() => void} fn
 */
export function gatewaySuite(name, fn) {
  if (!MISSING_BIN) return describe(name, fn);
  if (process.env.VRA_REQUIRE_SDK === '1') {
    return test(name, () => {
      throw new Error(`${MISSING_BIN}; VRA_REQUIRE_SDK=1 makes the SDK tests mandatory`);
    });
  }
  return test(name, { skip: MISSING_BIN }, () => {});
}

/** Environment variables of the caller that would change the sandbox; the tests set their own. */
const HERMETIC = /^(VRA_|MAX_CLOUD_CALLS$|OPENAI_|OLLAMA_|PRIMARY_PROVIDER$|SECONDARY_PROVIDER$)/;

/**
 * Starts `vra-gateway demo --serve` on a free loopback port and waits for its
 * `gateway listening on HOST:PORT` line (no sleeps).
 * @param {{env?: Record<string,string>, args?: string[], timeoutMs?: number}} [opts]
 */
export async function startGateway(opts = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !HERMETIC.test(k)));
  Object.assign(env, { VRA_GATEWAY_ADDR: '127.0.0.1:0' }, opts.env || {});
  const proc = spawn(GATEWAY_BIN, ['demo', '--serve', ...(opts.args || [])], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-20_000);
  });
  const exited = new Promise((res) => proc.once('exit', (code, signal) => res({ code, signal })));
  const target = await new Promise((res, rej) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      rej(new Error(`gateway did not print its listening line within ${opts.timeoutMs ?? 20000} ms\n${stderr}`));
    }, opts.timeoutMs ?? 20_000);
    const lines = createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      const m = /listening on (\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
    proc.once('error', (e) => {
      clearTimeout(timer);
      rej(e);
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`gateway exited (code ${code}, signal ${signal}) before listening\n${stderr}`));
    });
  });
  proc.stdout.resume();
  return {
    target: /** @type {string} */ (target),
    proc,
    stderr: () => stderr,
    /** SIGTERM, then the exit status ({code, signal}). */
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

/** A loopback port nothing listens on (bound, then released). */
export async function closedPort() {
  const srv = createServer();
  await new Promise((res) => srv.listen(0, '127.0.0.1', () => res(undefined)));
  const { port } = /** @type {import('node:net').AddressInfo} */ (srv.address());
  await new Promise((res) => srv.close(() => res(undefined)));
  return port;
}

/** A GatewayClient that counts its generate calls (to see the compiler's retries). */
export class CountingClient extends GatewayClient {
  calls = 0;
  /** @param {any} req */
  generate(req) {
    this.calls++;
    return super.generate(req);
  }
}
