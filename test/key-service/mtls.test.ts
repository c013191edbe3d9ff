// Mutual TLS for key delivery (ETSI GS QKD 014): a broker (SAE) identified by its client certificate calls the ETSI
// routes without a token; a token must name the same broker; certificates not from the client CA, unregistered or
// revoked ones, and certificates on routes of other roles get 401.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadKmsConfig } from '../../key-service/config.js';
import { initDataDir } from '../../key-service/data-dir.js';
import { startKms, type RunningKms } from '../../key-service/server.js';
import { keyIdFor } from '../../protocol/index.js';
import { runQkey } from '../helpers/cli.js';
import { proofFor, removeDir, startTestKms, tempDir } from '../helpers/kms.js';

const ADMIN_TOKEN = 'test-admin-token';
let dir: string;
let kms: RunningKms;
let port: number;
let serverCa: Buffer;

interface Identity {
  key: Buffer;
  cert: Buffer;
}
const ids: Record<string, Identity> = {};
/** dev-mtls's keys by index: 0 and 1 uplink, 2 and 3 downlink. */
const deviceKeys = [0, 1, 2, 3].map(() => randomBytes(16));

function openssl(...args: string[]): string {
  return execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

/** A P-256 key and a certificate for `subject`, signed by the test CA, or self-signed when `ca` is false. */
function issue(name: string, subject: string, ca = true): Identity {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.pem`);
  openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key);
  if (ca) {
    const csr = join(dir, `${name}.csr`);
    openssl('req', '-new', '-key', key, '-subj', subject, '-out', csr);
    const caKey = join(dir, 'ca.key');
    const caCert = join(dir, 'ca.pem');
    openssl('x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey, '-CAcreateserial', '-days', '1', '-out', cert);
  } else {
    openssl('req', '-x509', '-new', '-key', key, '-subj', subject, '-days', '1', '-out', cert);
  }
  return { key: readFileSync(key), cert: readFileSync(cert) };
}

function fingerprintOf(name: string): string {
  // "sha256 Fingerprint=AB:CD:..." (OpenSSL 3) or "SHA256 Fingerprint=..." (older)
  return openssl('x509', '-in', join(dir, `${name}.pem`), '-noout', '-fingerprint', '-sha256')
    .trim()
    .replace(/^.*=/, '');
}

function subjectOf(name: string): string {
  return openssl('x509', '-in', join(dir, `${name}.pem`), '-noout', '-subject', '-nameopt', 'RFC2253')
    .trim()
    .replace(/^subject=/, '');
}

/** One HTTPS request on a fresh connection, as a bare ETSI 014 client sends it: a certificate, maybe no token. */
function call(
  method: string,
  path: string,
  options: { id?: Identity; token?: string; body?: unknown } = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        agent: false,
        ca: serverCa,
        ...(options.id ? { key: options.id.key, cert: options.id.cert } : {}),
        headers: {
          ...(payload ? { 'content-type': 'application/json' } : {}),
          ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, json: text ? JSON.parse(text) : {} }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

async function startTlsKms(extra: { requireClientCert?: boolean } = {}): Promise<RunningKms> {
  const dataDir = join(dir, extra.requireClientCert ? 'data-required' : 'data');
  if (!existsSync(dataDir)) initDataDir(dataDir);
  const config = loadKmsConfig(
    {
      port: 0,
      dataDir,
      logLevel: 'silent',
      adminToken: ADMIN_TOKEN,
      tls: {
        cert: join(dir, 'server.pem'),
        key: join(dir, 'server.key'),
        ca: join(dir, 'ca.pem'),
        ...extra,
      },
    },
    { env: {} },
  );
  return startKms(config);
}

/** The admin API over this TLS listener (fetch would not trust the test's server certificate). */
async function adminCall(method: string, path: string, body?: unknown) {
  const r = await call(method, path, { token: ADMIN_TOKEN, body });
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}
async function claimedBy(deviceId: string): Promise<string[]> {
  const { keys } = (await adminCall('GET', `/api/v1/admin/devices/${deviceId}/keys`)) as {
    keys: Array<{ state: string; claimed_by: string | null }>;
  };
  return keys.filter((k) => k.state === 'claimed').map((k) => k.claimed_by!);
}

let tokenA: string;
let tokenB: string;

beforeAll(async () => {
  dir = tempDir('qkey-mtls-');
  openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', join(dir, 'ca.key'));
  openssl(
    'req',
    '-x509',
    '-new',
    '-key',
    join(dir, 'ca.key'),
    '-subj',
    '/CN=QKey Test Client CA',
    '-days',
    '1',
    '-out',
    join(dir, 'ca.pem'),
  );
  openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', join(dir, 'server.key'));
  openssl(
    'req', '-x509', '-new', '-key', join(dir, 'server.key'), '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1', '-out', join(dir, 'server.pem'),
  ); // prettier-ignore
  serverCa = readFileSync(join(dir, 'server.pem'));
  ids.a = issue('broker-a', '/O=QKey Test/CN=broker-a');
  ids.b = issue('broker-b', '/O=QKey Test/OU=Brokers/CN=broker-b');
  ids.stranger = issue('stranger', '/O=QKey Test/CN=stranger');
  // The same subject as broker-b, but not issued by the client CA.
  ids.forged = issue('forged', '/O=QKey Test/OU=Brokers/CN=broker-b', false);
  ids.c = issue('broker-c', '/O=QKey Test/CN=broker-c');

  kms = await startTlsKms();
  port = Number(new URL(kms.url).port);
  const fetchAdmin = async (path: string, body: unknown) =>
    (await call('POST', path, { token: ADMIN_TOKEN, body })).json;
  // Registered through the admin API with openssl's own spellings of the fingerprint and the subject.
  const a = await fetchAdmin('/api/v1/admin/brokers', {
    broker_id: 'broker-a',
    cert_fingerprint: fingerprintOf('broker-a'),
  });
  const b = await fetchAdmin('/api/v1/admin/brokers', { broker_id: 'broker-b', cert_subject: subjectOf('broker-b') });
  expect(subjectOf('broker-b')).toBe('CN=broker-b,OU=Brokers,O=QKey Test');
  tokenA = (await fetchAdmin('/api/v1/auth/token', grant('broker-a', a.client_secret as string)))
    .access_token as string;
  tokenB = (await fetchAdmin('/api/v1/auth/token', grant('broker-b', b.client_secret as string)))
    .access_token as string;
  await adminCall('POST', '/api/v1/admin/devices', { device_id: 'dev-mtls' });
  const keys = deviceKeys.map((key, i) => ({
    key_index: i,
    direction: i < 2 ? 'up' : 'down',
    key: key.toString('base64'),
  }));
  await adminCall('POST', '/api/v1/admin/devices/dev-mtls/batches', { batch_id: 'b1', keys });
  await adminCall('POST', '/api/v1/admin/devices/dev-mtls/batches/b1/commit');
});
afterAll(async () => {
  await kms?.close();
  removeDir(dir);
});

function grant(id: string, secret: string) {
  return { grant_type: 'client_credentials', client_id: id, client_secret: secret };
}

describe('a broker identified by its client certificate', () => {
  it('calls status, enc_keys and dec_keys with a plain https.request, a certificate and no Authorization header', async () => {
    const status = await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.a });
    expect(status.status).toBe(200);
    expect(status.json).toMatchObject({ master_SAE_ID: 'broker-a', slave_SAE_ID: 'dev-mtls', stored_key_count: 2 });

    const enc = await call('POST', '/api/v1/keys/dev-mtls/enc_keys', { id: ids.a, body: { number: 1, size: 128 } });
    expect(enc.status).toBe(200);
    const keys = enc.json.keys as Array<{ key_ID: string; key: string }>;
    expect(keys).toHaveLength(1);
    expect(Buffer.from(keys[0]!.key, 'base64')).toHaveLength(16);

    const proof = proofFor('dev-mtls', 0, deviceKeys[0]!);
    const dec = await call('POST', '/api/v1/keys/dev-mtls/dec_keys', {
      id: ids.a,
      body: {
        key_IDs: [
          {
            key_ID: keyIdFor('dev-mtls', 0),
            key_ID_extension: {
              qkey_proof: {
                envelope: Buffer.from(proof.envelope).toString('base64'),
                topic: proof.topic,
                direction: 'up',
              },
            },
          },
        ],
      },
    });
    expect(dec.status).toBe(200);
    expect((dec.json.keys as unknown[]).length).toBe(1);

    expect(await claimedBy('dev-mtls')).toEqual(['broker-a', 'broker-a']);
  });

  it('is identified by subject (RFC 4514, as openssl prints it) as well as by fingerprint', async () => {
    const status = await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.b });
    expect(status.status).toBe(200);
    expect(status.json.master_SAE_ID).toBe('broker-b');
    expect((await call('GET', '/api/v1/revocations', { id: ids.b })).status).toBe(200);
  });

  it('may also send a token naming the same broker; a token naming another broker is refused', async () => {
    expect((await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.a, token: tokenA })).status).toBe(200);
    const mismatch = await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.a, token: tokenB });
    expect(mismatch.status).toBe(401);
    expect(mismatch.json.code).toBe('KMS_ERR_UNAUTHORIZED');
    const claimedBefore = (await claimedBy('dev-mtls')).length;
    expect((await call('POST', '/api/v1/keys/dev-mtls/enc_keys', { id: ids.b, token: tokenA, body: {} })).status).toBe(
      401,
    );
    expect((await claimedBy('dev-mtls')).length).toBe(claimedBefore);
  });

  it('refuses a certificate not issued by the client CA, even with a registered subject', async () => {
    const r = await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.forged });
    expect(r.status).toBe(401);
    expect(r.json.code).toBe('KMS_ERR_UNAUTHORIZED');
  });

  it('refuses an unregistered certificate without a token; with a token, the token identifies the broker', async () => {
    expect((await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.stranger })).status).toBe(401);
    const withToken = await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.stranger, token: tokenA });
    expect(withToken.status).toBe(200);
    expect(withToken.json.master_SAE_ID).toBe('broker-a');
    expect((await call('GET', '/api/v1/keys/dev-mtls/status')).status).toBe(401);
  });

  it('opens no other role’s routes: a broker certificate on the admin API gets 401', async () => {
    for (const [method, path] of [
      ['GET', '/api/v1/admin/devices'],
      ['POST', '/api/v1/admin/brokers'],
      ['GET', '/api/v1/%61dmin/brokers'],
    ] as const) {
      const r = await call(method, path, { id: ids.a, body: method === 'POST' ? { broker_id: 'x' } : undefined });
      expect(r.status, `${method} ${path}`).toBe(401);
    }
  });

  it('stops working when the broker is revoked', async () => {
    const c = await call('POST', '/api/v1/admin/brokers', {
      token: ADMIN_TOKEN,
      body: { broker_id: 'broker-c', cert_fingerprint: fingerprintOf('broker-c') },
    });
    expect(c.status).toBe(201);
    expect((await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.c })).status).toBe(200);
    await adminCall('POST', '/api/v1/admin/brokers/broker-c/revoke');
    expect((await call('GET', '/api/v1/keys/dev-mtls/status', { id: ids.c })).status).toBe(401);
  });

  it('cannot be registered twice: one certificate identifies one broker', async () => {
    const r = await call('POST', '/api/v1/admin/brokers', {
      token: ADMIN_TOKEN,
      body: { broker_id: 'broker-a2', cert_fingerprint: fingerprintOf('broker-a') },
    });
    expect(r.status).toBe(409);
    const malformed = await call('POST', '/api/v1/admin/brokers', {
      token: ADMIN_TOKEN,
      body: { broker_id: 'broker-x', cert_fingerprint: 'ab:cd' },
    });
    expect(malformed.status).toBe(400);
  });
});

describe('tls.requireClientCert', () => {
  it('refuses, at the handshake, a client without a certificate from the client CA', async () => {
    const strict = await startTlsKms({ requireClientCert: true });
    const strictPort = Number(new URL(strict.url).port);
    try {
      const saved = port;
      port = strictPort;
      try {
        await expect(call('GET', '/healthz')).rejects.toThrow();
        await expect(call('GET', '/healthz', { id: ids.forged })).rejects.toThrow();
        expect((await call('GET', '/healthz', { id: ids.stranger })).status).toBe(200);
      } finally {
        port = saved;
      }
    } finally {
      await strict.close();
    }
  });

  it('needs tls.ca', () => {
    expect(() => loadKmsConfig({ tls: { cert: 'x', key: 'y', requireClientCert: true } }, { env: {} })).toThrow(
      /tls.requireClientCert needs tls.ca/,
    );
  });
});

describe('qkey admin broker add', () => {
  it('records a fingerprint given in any usual spelling as openssl prints it, or a subject, and lists them', async () => {
    const t = await startTestKms();
    try {
      const fp = fingerprintOf('stranger');
      const qkey = (...args: string[]) => runQkey('admin', '--kms', t.url, '--token', 'test-admin-token', ...args);
      const plain = fp.replace(/:/g, '').toLowerCase();
      expect((await qkey('broker', 'add', 'broker-s', '--cert-fingerprint', plain)).code).toBe(0);
      expect((await qkey('broker', 'add', 'broker-t', '--cert-subject', subjectOf('broker-b'))).code).toBe(0);
      const both = await qkey('broker', 'add', 'broker-u', '--cert-fingerprint', plain, '--cert-subject', 'CN=x');
      expect(both.code).toBe(2);
      expect((await qkey('broker', 'add', 'broker-v', '--cert-fingerprint', 'abcd')).code).toBe(2);
      const brokers = await t.admin.listClients('broker');
      expect(brokers.find((b) => b.client_id === 'broker-s')?.cert_fingerprint).toBe(fp);
      expect(brokers.find((b) => b.client_id === 'broker-t')?.cert_subject).toBe('CN=broker-b,OU=Brokers,O=QKey Test');
      const list = await qkey('broker', 'list');
      expect(list.out).toContain(fp);
    } finally {
      await t.stop();
      removeDir(t.dataDir);
    }
  });
});
