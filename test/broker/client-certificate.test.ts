// Mutual TLS for devices: certificates made by the test with the openssl CLI, over the TLS and secure WebSocket
// listeners: the right certificate, another device's, one naming two subjects, none, one from an untrusted CA, and
// the policy that lets a certificate replace the token, both ways.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certificateMismatch } from '../../broker/client-certificate.js';
import { loadBrokerConfig } from '../../broker/config.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let dir: string;
const pem = (name: string) => readFileSync(join(dir, `${name}.pem`));
const key = (name: string) => readFileSync(join(dir, `${name}.key`));

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
}
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

/** A CA certificate and key named `name`. */
function ca(name: string): void {
  openssl('req', '-x509', ...EC, '-days', '1', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.pem`);
}

/** A client certificate with subject `subject`, issued by `issuer`. */
function issue(name: string, subject: string, issuer: string): void {
  openssl('req', ...EC, '-subj', subject, '-keyout', `${name}.key`, '-out', `${name}.csr`);
  openssl(
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${issuer}.pem`,
    '-CAkey',
    `${issuer}.key`,
    '-CAcreateserial',
    '-days',
    '1',
    '-out',
    `${name}.pem`,
  );
}

beforeAll(() => {
  dir = tempDir('qkey-mtls-');
  openssl('req', '-x509', ...EC, '-days', '1', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.pem');
  ca('device-ca');
  ca('rogue-ca');
  issue('dev-a', '/CN=dev-mtls-a', 'device-ca');
  issue('dev-b', '/CN=dev-mtls-b', 'device-ca');
  issue('two-names', '/CN=dev-mtls-a/CN=dev-mtls-b', 'device-ca');
  issue('app', '/CN=app-mtls', 'device-ca');
  issue('rogue-a', '/CN=dev-mtls-a', 'rogue-ca');
});
afterAll(() => removeDir(dir));

type Outcome = 'connected' | `connack ${number}` | 'no connection';

/** Connects once and reports how it ended: CONNACK 0, another return code, or no MQTT connection at all. */
function attempt(url: string, options: IClientOptions): Promise<Outcome> {
  return new Promise((resolve) => {
    const client = mqtt.connect(url, {
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      rejectUnauthorized: false,
      ...options,
    });
    const done = (o: Outcome) => {
      client.end(true);
      resolve(o);
    };
    client.once('connect', () => done('connected'));
    client.once('error', (err: Error & { code?: number | string }) =>
      done(typeof err.code === 'number' ? `connack ${err.code}` : 'no connection'),
    );
    client.once('close', () => done('no connection'));
  });
}

const tls = (name: string | undefined) => (name ? { cert: pem(name), key: key(name) } : {});

async function system(tokenRequired: boolean): Promise<TestSystem> {
  const cert = join(dir, 'server.pem');
  const serverKey = join(dir, 'server.key');
  return startTestSystem({
    tls: { port: 0, cert, key: serverKey },
    wss: { port: 0, cert, key: serverKey },
    clientCertificates: { ca: join(dir, 'device-ca.pem'), tokenRequired },
  });
}

describe('mutual TLS, token required (the default)', () => {
  let sys: TestSystem;
  let a: SecurityChip;
  beforeAll(async () => {
    sys = await system(true);
    a = await sys.device('dev-mtls-a', 64);
    await sys.device('dev-mtls-b');
  });
  afterAll(() => sys.stop());

  const device = async (chip: SecurityChip, cert: string | undefined, username = chip.deviceId) => {
    chip.beginSession();
    return { clientId: chip.deviceId, username, password: await sys.deviceToken(chip), ...tls(cert) };
  };

  it.each(['mqtts', 'wss'] as const)(
    'over %s: the right certificate with the token connects and publishes',
    async (kind) => {
      const url = kind === 'mqtts' ? sys.broker.urls.mqtts! : sys.broker.urls.wss!;
      const app = await sys.connectApp(`app-mtls-watch-${kind}`);
      await app.subscribeAsync('devices/+/up/#', { qos: 1 });
      const opts = await device(a, 'dev-a');
      const dev = await mqtt.connectAsync(url, { ...opts, reconnectPeriod: 0, rejectUnauthorized: false });
      const topic = `devices/${a.deviceId}/up/t`;
      const got = nextMessage(app);
      await dev.publishAsync(topic, Buffer.from(a.sealUplink(Buffer.from(kind), topic)), { qos: 1 });
      expect((await got).payload.toString()).toBe(kind);
      await dev.endAsync();
    },
  );

  it.each(['mqtts', 'wss'] as const)("over %s: another device's certificate gets CONNACK 5", async (kind) => {
    const url = kind === 'mqtts' ? sys.broker.urls.mqtts! : sys.broker.urls.wss!;
    expect(await attempt(url, await device(a, 'dev-b'))).toBe('connack 5');
  });

  it('a certificate naming two subjects gets CONNACK 5, even when one of them is the device', async () => {
    expect(await attempt(sys.broker.urls.mqtts!, await device(a, 'two-names'))).toBe('connack 5');
  });

  it.each(['mqtts', 'wss'] as const)(
    'over %s: no certificate, or one from an untrusted CA, gets no connection',
    async (kind) => {
      const url = kind === 'mqtts' ? sys.broker.urls.mqtts! : sys.broker.urls.wss!;
      expect(await attempt(url, await device(a, undefined))).toBe('no connection');
      expect(await attempt(url, await device(a, 'rogue-a'))).toBe('no connection');
    },
  );

  it('the right certificate without the token gets CONNACK 4', async () => {
    a.beginSession();
    expect(await attempt(sys.broker.urls.mqtts!, { clientId: a.deviceId, username: a.deviceId, ...tls('dev-a') })).toBe(
      'connack 4',
    );
  });

  it("a certificate for this device cannot carry another device's token", async () => {
    const b = await sys.device('dev-mtls-b2');
    b.beginSession();
    const opts = { clientId: b.deviceId, username: b.deviceId, password: await sys.deviceToken(b), ...tls('dev-a') };
    expect(await attempt(sys.broker.urls.mqtts!, opts)).toBe('connack 5');
  });

  it('the plain TCP listener still takes a token alone', async () => {
    expect(await attempt(sys.mqttUrl, await device(a, undefined))).toBe('connected');
  });

  it("an application's certificate must name the application", async () => {
    const { client_secret } = await sys.kms.admin.registerApp('app-mtls', { subscribe: ['devices/+/up/#'] });
    const { access_token } = await sys.kms.anon.clientToken('app-mtls', client_secret);
    const app = { clientId: 'app-mtls/console', username: 'app-mtls', password: access_token };
    expect(await attempt(sys.broker.urls.mqtts!, { ...app, ...tls('app') })).toBe('connected');
    expect(await attempt(sys.broker.urls.mqtts!, { ...app, ...tls('dev-a') })).toBe('connack 5');
  });
});

describe('mutual TLS, a certificate may replace the token (tokenRequired: false)', () => {
  let sys: TestSystem;
  let a: SecurityChip;
  beforeAll(async () => {
    sys = await system(false);
    a = await sys.device('dev-mtls-a', 64);
    await sys.device('dev-mtls-b');
  });
  afterAll(() => sys.stop());

  it.each(['mqtts', 'wss'] as const)('over %s: the certificate alone connects the device it names', async (kind) => {
    const url = kind === 'mqtts' ? sys.broker.urls.mqtts! : sys.broker.urls.wss!;
    const app = await sys.connectApp(`app-mtls-alone-${kind}`);
    await app.subscribeAsync('devices/+/up/#', { qos: 1 });
    a.beginSession();
    const dev = await mqtt.connectAsync(url, {
      clientId: a.deviceId,
      username: a.deviceId,
      reconnectPeriod: 0,
      rejectUnauthorized: false,
      ...tls('dev-a'),
    });
    const topic = `devices/${a.deviceId}/up/t`;
    const got = nextMessage(app);
    await dev.publishAsync(topic, Buffer.from(a.sealUplink(Buffer.from('alone'), topic)), { qos: 1 });
    expect((await got).payload.toString()).toBe('alone');
    await dev.endAsync();
  });

  it('a certificate alone connects devices only: an application certificate without its token is refused', async () => {
    expect(
      await attempt(sys.broker.urls.mqtts!, { clientId: 'app-mtls/console', username: 'app-mtls', ...tls('app') }),
    ).toBe('connack 5');
  });

  it('the certificate alone cannot connect another device', async () => {
    const b = { clientId: 'dev-mtls-b', username: 'dev-mtls-b', ...tls('dev-a') };
    expect(await attempt(sys.broker.urls.mqtts!, b)).toBe('connack 5');
  });

  it('the token still works, and must match the certificate', async () => {
    a.beginSession();
    const token = await sys.deviceToken(a);
    expect(
      await attempt(sys.broker.urls.mqtts!, {
        clientId: a.deviceId,
        username: a.deviceId,
        password: token,
        ...tls('dev-a'),
      }),
    ).toBe('connected');
    expect(
      await attempt(sys.broker.urls.mqtts!, {
        clientId: a.deviceId,
        username: a.deviceId,
        password: token,
        ...tls('dev-b'),
      }),
    ).toBe('connack 5');
  });

  it('a device revoked at the key service after its certificate was issued is refused', async () => {
    const c = await sys.device('dev-mtls-c');
    issue('dev-c', '/CN=dev-mtls-c', 'device-ca');
    const opts = { clientId: c.deviceId, username: c.deviceId, ...tls('dev-c') };
    c.beginSession();
    expect(await attempt(sys.broker.urls.mqtts!, opts)).toBe('connected');
    await sys.kms.admin.revokeDevice(c.deviceId);
    // The revocation reaches the broker with its next poll of the feed.
    let outcome: Outcome = 'connected';
    for (let i = 0; i < 100 && outcome === 'connected'; i++) {
      await new Promise((r) => setTimeout(r, 100));
      outcome = await attempt(sys.broker.urls.mqtts!, opts);
    }
    expect(outcome).toBe('connack 5');
  });
});

describe('client certificate configuration and identity', () => {
  it('needs a CA file, a boolean policy and a TLS or WSS listener; the token stays required by default', () => {
    const pem = (name: string) => {
      const path = join(dir, `config-${name}.pem`);
      writeFileSync(path, '-----BEGIN CERTIFICATE-----\n');
      return path;
    };
    const ca = pem('ca');
    const tlsListener = { port: 0, cert: pem('cert'), key: pem('key') };
    expect(() =>
      loadBrokerConfig({ clientCertificates: { ca: '', tokenRequired: true }, tls: tlsListener }, { env: {} }),
    ).toThrow(/"clientCertificates.ca" = "" .* expected a non-empty string/);
    expect(() =>
      loadBrokerConfig({ clientCertificates: { ca: join(dir, 'missing.pem') }, tls: tlsListener }, { env: {} }),
    ).toThrow(/"clientCertificates.ca" = ".*missing.pem": cannot read that file/);
    expect(() =>
      loadBrokerConfig({ clientCertificates: { ca, tokenRequired: 'no' as never }, tls: tlsListener }, { env: {} }),
    ).toThrow(/"clientCertificates.tokenRequired"/);
    expect(() => loadBrokerConfig({ clientCertificates: { ca, tokenRequired: true } }, { env: {} })).toThrow(
      /needs a tls or wss listener/,
    );
    const c = loadBrokerConfig({ clientCertificates: { ca } as never, tls: tlsListener }, { env: {} });
    expect(c.clientCertificates).toEqual({ ca, tokenRequired: true });
  });

  it('a connection with a certificate may only be the principal its certificate names', () => {
    expect(certificateMismatch(undefined, 'dev-1')).toBeUndefined();
    expect(certificateMismatch({ id: 'dev-1', notBefore: 0 }, 'dev-1')).toBeUndefined();
    expect(certificateMismatch({ id: 'dev-2', notBefore: 0 }, 'dev-1')).toMatch(/another principal/);
    expect(certificateMismatch({ id: undefined, notBefore: 0 }, 'dev-1')).toMatch(/single subject CN/);
  });
});
