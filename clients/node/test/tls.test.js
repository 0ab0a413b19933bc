// TLS and mTLS, with a CA and certificates made here by the openssl CLI.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { GatewayClient, Phase, SectionType, Unavailable } from '../index.js';
import { MISSING_BIN, gatewaySuite, startGateway } from './helpers/gateway.js';

function hasOpenssl() {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * A CA, a server certificate for DNS:localhost and IP:127.0.0.1, and a client certificate for
 * DNS:reports-node, all P-256.
 */
function makeCerts(dir) {
  const ossl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ossl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=vra-test-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const leaf = (name, subject, ext) => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    ossl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    ossl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
  };
  leaf('server', '/CN=localhost',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
  leaf('client', '/CN=reports-node-cn',
    'subjectAltName=DNS:reports-node\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  const f = (n) => join(dir, n);
  return { ca: f('ca.pem'), serverCert: f('server.crt'), serverKey: f('server.key'), clientCert: f('client.crt'), clientKey: f('client.key') };
}

const req = { reportId: 'tls-report', sectionId: '1', phase: Phase.DRAFT, sectionType: SectionType.INTRODUCTION, prompt: 'x' };

async function stopOk(gw) {
  if (!gw) return;
  const { code } = await gw.stop();
  assert.equal(code, 0, gw.stderr());
}

if (!MISSING_BIN && !hasOpenssl()) {
  test('TLS and mTLS', { skip: 'the openssl CLI is not installed (needed to make test certificates)' }, () => {});
} else {
  gatewaySuite('TLS and mTLS', () => {
    let dir;
    let certs;
    let tls;
    let mtls;
    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'vra-tls-'));
      certs = makeCerts(dir);
      const clientsFile = join(dir, 'clients.toml');
      // With mTLS the client id is the certificate's first DNS SAN; this entry gives it limits.
      writeFileSync(clientsFile, '[[client]]\nid = "reports-node"\nmax_cloud_calls = 3\n');
      const server = { VRA_TLS_CERT_FILE: certs.serverCert, VRA_TLS_KEY_FILE: certs.serverKey };
      [tls, mtls] = await Promise.all([
        startGateway({ env: server }),
        startGateway({ env: { ...server, VRA_TLS_CLIENT_CA_FILE: certs.ca, VRA_CLIENTS_FILE: clientsFile } }),
      ]);
    });
    after(async () => {
      await Promise.all([stopOk(tls), stopOk(mtls)]);
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test('TLS: the CA as a file path verifies the server at 127.0.0.1 (IP SAN)', async () => {
      const client = new GatewayClient({ target: tls.target, tls: { ca: certs.ca }, timeoutMs: 10_000 });
      try {
        const r = await client.generate(req);
        assert.equal(r.route.rule, 'draft-reasoning-primary');
        assert.equal(r.budget.cloudCallsLimit, 15);
      } finally {
        client.close();
      }
    });

    test('TLS: the CA as a Buffer, with a serverName override (DNS SAN)', async () => {
      const client = new GatewayClient({
        target: tls.target,
        tls: { ca: readFileSync(certs.ca), serverName: 'localhost' },
        timeoutMs: 10_000,
      });
      try {
        let last;
        for await (const ev of client.generateStream(req)) last = ev;
        assert.equal(last.type, 'result');
        assert.ok(last.result.text.length > 0);
      } finally {
        client.close();
      }
    });

    test('TLS: a plaintext client, an untrusted server or a wrong name → Unavailable', async () => {
      const variants = [
        { name: 'plaintext', opts: {} },
        { name: 'system roots only', opts: { tls: true } },
        { name: 'name mismatch', opts: { tls: { ca: certs.ca, serverName: 'gateway.example' } } },
      ];
      for (const { name, opts } of variants) {
        const client = new GatewayClient({ target: tls.target, timeoutMs: 5000, ...opts });
        try {
          const e = await client.reportUsage('x').catch((err) => err);
          assert.ok(e instanceof Unavailable, `${name}: got ${e?.name}: ${e?.message}`);
        } finally {
          client.close();
        }
      }
    });

    test('mTLS: the client certificate (PEM text and paths) is the identity', async () => {
      const client = new GatewayClient({
        target: mtls.target,
        tls: { ca: certs.ca, cert: readFileSync(certs.clientCert, 'utf8'), key: certs.clientKey },
        timeoutMs: 10_000,
      });
      try {
        const r = await client.generate(req);
        assert.equal(r.route.tier, 'PRIMARY');
        assert.equal(r.budget.cloudCallsLimit, 3, 'the [[client]] limits of the DNS SAN reports-node apply');
        const u = await client.reportUsage(req.reportId);
        assert.equal(u.budget.cloudCallsUsed, 1);
      } finally {
        client.close();
      }
    });

    test('mTLS: without a client certificate the handshake fails → Unavailable', async () => {
      const client = new GatewayClient({ target: mtls.target, tls: { ca: certs.ca }, timeoutMs: 5000 });
      try {
        const e = await client.generate(req).catch((err) => err);
        assert.ok(e instanceof Unavailable, `got ${e?.name}: ${e?.message}`);
      } finally {
        client.close();
      }
    });
  });
}
