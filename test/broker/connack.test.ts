// docs/PROTOCOL.md §16.1 and §16.2 held against the broker: every row of the CONNACK table, and every way a
// connection ends without one, is produced here by a scenario, which must get the documented answer. A row without
// a scenario, or a scenario without a row, fails: the table and the broker cannot drift apart.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions } from 'mqtt';
import type { Packet } from 'mqtt-packet';
import { afterAll, afterEach, beforeAll, describe, expect, it, type MockInstance, vi } from 'vitest';
import { TokenAuthority } from '../../broker/token-authority.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { KmsClient, KmsHttpError } from '../../kms-api/client.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { fixedHeader, RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
const section = (from: string, to: string) => doc.slice(doc.indexOf(from), doc.indexOf(to, doc.indexOf(from)));
const rows = [...section('### 16.1 ', '### 16.2 ').matchAll(/^\| (\d) \| (.+) \|$/gm)].map((m) => ({
  code: Number(m[1]),
  when: m[2]!,
}));
const closures = [...section('### 16.2 ', '### 16.3 ').matchAll(/^- (.+?);?$/gm)].map((m) => m[1]!.replace(/\.$/, ''));

let dir: string;
let sys: TestSystem;
let chip: SecurityChip;
const MAX_DOWNLINK = 1024;

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
}
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1'];
function clientCert(name: string, cn: string): void {
  openssl('req', ...EC.slice(0, -2), '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
  openssl(
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-days',
    '1',
    '-out',
    `${name}.pem`,
  );
}

beforeAll(async () => {
  dir = tempDir('qkey-connack-');
  openssl('req', '-x509', ...EC, '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.pem');
  openssl('req', '-x509', ...EC, '-subj', '/CN=connack-ca', '-keyout', 'ca.key', '-out', 'ca.pem');
  clientCert('dev-ok', 'dev-connack');
  clientCert('dev-revoked', 'dev-connack-revoked');
  clientCert('dev-unknown', 'dev-connack-unknown');
  sys = await startTestSystem({
    tls: { port: 0, cert: join(dir, 'server.pem'), key: join(dir, 'server.key') },
    clientCertificates: { ca: join(dir, 'ca.pem'), tokenRequired: false },
    maxDownlinkPayload: MAX_DOWNLINK,
  });
  chip = await sys.device('dev-connack', 64, 16);
});
afterEach(() => {
  vi.restoreAllMocks();
});
afterAll(async () => {
  await sys?.stop();
  removeDir(dir);
});

type Connect = Parameters<typeof RawMqtt.connect>[1];

/** A device CONNECT over plain TCP with a fresh token: what each scenario changes one thing of. */
async function device(): Promise<Connect> {
  chip.beginSession();
  return { clientId: chip.deviceId, username: chip.deviceId, password: await sys.deviceToken(chip) };
}

/** The CONNACK return code a raw CONNECT gets over plain TCP. */
async function raw(connect: Connect): Promise<number> {
  const { raw: r, returnCode } = await RawMqtt.connect(sys.mqttUrl, connect);
  r.destroy();
  return returnCode;
}

/** The CONNACK return code (or -1 with no CONNACK) of any packet sent as the CONNECT. */
async function rawPacket(packet: Packet): Promise<number> {
  const r = await RawMqtt.open(sys.mqttUrl);
  r.send(packet);
  const connack = await r.next('connack', 5000).catch(() => undefined);
  r.destroy();
  return connack ? (connack as { returnCode: number }).returnCode : -1;
}

/** The CONNACK return code over the mutual-TLS listener with client certificate `cert`. */
function tls(cert: string, options: IClientOptions): Promise<number> {
  return new Promise((resolve) => {
    const client = mqtt.connect(sys.broker.urls.mqtts!, {
      reconnectPeriod: 0,
      rejectUnauthorized: false,
      cert: readFileSync(join(dir, `${cert}.pem`)),
      key: readFileSync(join(dir, `${cert}.key`)),
      ...options,
    });
    const done = (code: number) => {
      client.end(true);
      resolve(code);
    };
    client.once('connect', () => done(0));
    client.once('error', (err: Error & { code?: number | string }) =>
      done(typeof err.code === 'number' ? err.code : -1),
    );
  });
}

async function appToken(appId: string, acl?: { publish?: string[]; subscribe?: string[] }): Promise<string> {
  const { client_secret } = await sys.kms.admin.registerApp(appId, acl);
  return (await sys.kms.anon.clientToken(appId, client_secret)).access_token;
}

/** Retries until `check` gives `want` (effects that arrive with the next poll of the revocation feed). */
async function eventually(check: () => Promise<number>, want: number): Promise<number> {
  let got = await check();
  for (let i = 0; i < 50 && got !== want; i++) {
    await new Promise((r) => setTimeout(r, 100));
    got = await check();
  }
  return got;
}

/** Runs `attempt` with a fault armed on `spy` (a once-only implementation) and checks the fault was reached. */
async function withFault(spy: MockInstance, attempt: () => Promise<number>): Promise<number> {
  const code = await attempt();
  expect(spy, 'the fault was reached').toHaveBeenCalled();
  return code;
}

let queueChip: SecurityChip | undefined;
/** A device whose persistent session holds a queued QoS 1 command; its next CONNECT (clean session 0). */
async function queuedSession(): Promise<Connect> {
  const q = (queueChip ??= await sys.device('dev-connack-queue', 8, 8));
  q.beginSession();
  const first = { clientId: q.deviceId, username: q.deviceId, password: await sys.deviceToken(q), clean: false };
  const { raw: r, returnCode } = await RawMqtt.connect(sys.mqttUrl, first);
  expect(returnCode).toBe(0);
  r.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/dev-connack-queue/down/#', qos: 1 }] });
  await r.next('suback');
  r.send({ cmd: 'disconnect' });
  await r.closed;
  const app = await sys.connectApp(`app-connack-queue-${Math.random().toString(36).slice(2, 8)}`, {
    publish: ['devices/+/down/#'],
  });
  await app.publishAsync('devices/dev-connack-queue/down/cmd', 'queued', { qos: 1 });
  await app.endAsync();
  q.beginSession();
  return { ...first, password: await sys.deviceToken(q) };
}

const connectPacket = (over: Record<string, unknown>): Packet =>
  ({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    keepalive: 30,
    clientId: 'x',
    ...over,
  }) as Packet;

/** One scenario per row of §16.1, keyed by the row's text. */
const scenarios: Record<string, () => Promise<number>> = {
  'the protocol level is 5 (MQTT 5) [MQTT-3.1.2-2]': () => rawPacket(connectPacket({ protocolVersion: 5 })),
  'the protocol level is 3 (MQTT 3.1) and the client id is longer than 23 characters': () =>
    rawPacket(connectPacket({ protocolId: 'MQIsdp', protocolVersion: 3, clientId: 'a'.repeat(24) })),
  'the client id is empty and clean session is 0 [MQTT-3.1.3-8]': async () => {
    // mqtt-packet will not write this CONNECT (MQTT 3.1.1 §3.1): flags 0xC0 = user name + password, clean session 0.
    const { username, password } = await device();
    const str = (b: Buffer) => Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
    const body = Buffer.concat([
      str(Buffer.from('MQTT')),
      Buffer.from([4, 0xc0, 0, 30]),
      str(Buffer.alloc(0)),
      str(Buffer.from(username!)),
      str(Buffer.from(password!)),
    ]);
    const r = await RawMqtt.open(sys.mqttUrl);
    r.write(Buffer.concat([fixedHeader(0x10, body.length), body]));
    const connack = (await r.next('connack')) as { returnCode: number };
    r.destroy();
    return connack.returnCode;
  },
  'the client id is not empty and is neither an id (§14) nor `<id>/<name>` with a non-empty name [MQTT-3.1.3-9]':
    async () => raw({ ...(await device()), clientId: 'dev connack' }),
  'the user name is present and is not an id (§14)': async () => raw({ ...(await device()), username: 'dev/connack' }),
  'there is no user name, or no password where a token is required': async () => {
    const { clientId, username } = await device();
    const noPassword = await raw({ clientId, username });
    const noUser = await raw({ clientId }); // (a password without a user name cannot be sent [MQTT-3.1.2-22])
    expect(noUser).toBe(noPassword);
    return noPassword;
  },
  "a certificate replaces the token (§15) and the device was revoked at or after the certificate's start of validity":
    async () => {
      await sys.device('dev-connack-revoked');
      const options = { clientId: 'dev-connack-revoked', username: 'dev-connack-revoked' };
      expect(await tls('dev-revoked', options)).toBe(0); // the certificate alone is enough...
      await sys.kms.admin.revokeDevice('dev-connack-revoked', 'test');
      return eventually(() => tls('dev-revoked', options), 5); // ...until the device is revoked
    },
  'the token is malformed, its signature does not verify under a published key, it has expired or is not yet valid (30 seconds of clock skew allowed), or its subject was revoked at or after it was issued':
    async () => {
      const good = await device();
      const forged = await raw({ ...good, password: `${good.password!.slice(0, -4)}AAAA` });
      expect(forged).toBe(await raw({ ...good, password: 'qk1.x.y' }));
      return forged;
    },
  "the user name is not the token's subject": async () => {
    const other = await sys.device('dev-connack-other', 1, 1);
    return raw({ ...(await device()), clientId: other.deviceId, username: other.deviceId });
  },
  "the token is a broker's": async () => {
    const { client_secret } = await sys.kms.admin.registerBroker('broker-connack');
    const { access_token } = await sys.kms.anon.clientToken('broker-connack', client_secret);
    return raw({ clientId: 'broker-connack', username: 'broker-connack', password: access_token });
  },
  "a device's client id is not its user name": async () => raw({ ...(await device()), clientId: 'dev-connack-x' }),
  "an application's client id is not `<appId>/<name>` (an empty one, with clean session 1, is allowed: the broker assigns `<appId>/<uuid>`)":
    async () => {
      const password = await appToken('app-connack-id');
      expect(await raw({ clientId: '', username: 'app-connack-id', password })).toBe(0);
      return raw({ clientId: 'app-connack-id', username: 'app-connack-id', password });
    },
  'with mutual TLS, the client certificate does not name this device or application as its single subject CN':
    async () => {
      const { password } = await device();
      const other = await sys.device('dev-connack-cert', 1, 1);
      other.beginSession();
      const mine = await tls('dev-ok', { clientId: chip.deviceId, username: chip.deviceId, password: password! });
      expect(mine).toBe(0);
      const token = await sys.deviceToken(other);
      return tls('dev-ok', { clientId: other.deviceId, username: other.deviceId, password: token });
    },
  'the will topic is not one the client may publish to': async () => {
    const topic = 'devices/dev-connack-other/up/will';
    return raw({ ...(await device()), will: { topic, payload: Buffer.from(chip.sealWill(Buffer.from('x'), topic)) } });
  },
  "an application's will to a device's downlink topic is larger than a device must accept (§15.1)": async () => {
    const password = await appToken('app-connack-will', { publish: ['devices/+/down/#'] });
    const will = (n: number) => ({ topic: 'devices/dev-connack/down/cmd', payload: Buffer.alloc(n, 0x41) });
    const app = { clientId: 'app-connack-will/1', username: 'app-connack-will', password };
    expect(await raw({ ...app, will: will(MAX_DOWNLINK) })).toBe(0);
    return raw({ ...app, will: will(MAX_DOWNLINK + 1) });
  },
  "a device's will is not empty and is not an envelope with sequence number 0 (malformed, unknown version or suite, too large)":
    async () => {
      const topic = 'devices/dev-connack/up/will';
      const plain = await raw({ ...(await device()), will: { topic, payload: Buffer.from('plaintext will') } });
      const sealedAt1 = await device();
      chip.sealUplink(Buffer.from('first'), topic); // seq 0 taken: the will below is at seq 1
      const envelope = Buffer.from(chip.sealUplink(Buffer.from('not a will'), topic));
      expect(await raw({ ...sealedAt1, will: { topic, payload: envelope } })).toBe(plain);
      return plain;
    },
  "the device's token names no envelope suite the broker can seal downlink in (§20)": async () => {
    // The key service records only suites 1 and 2, which this broker seals: a token naming another comes from a
    // newer key service. The broker's verifier is made to return one.
    const connect = await device();
    const verify = TokenAuthority.prototype.verify;
    const spy = vi.spyOn(TokenAuthority.prototype, 'verify').mockImplementationOnce(function (
      this: TokenAuthority,
      token,
    ) {
      return { ...verify.call(this, token), suites: [3] };
    });
    return withFault(spy, () => raw(connect));
  },
  'a certificate replaces the token and the key service, asked once (a status read), does not know the device or has revoked it':
    async () => {
      // Only a certificate alone can name a device the key service never issued a token for.
      const options = { clientId: 'dev-connack-unknown', username: 'dev-connack-unknown' };
      return tls('dev-unknown', options);
    },
  'a certificate replaces the token and the key service cannot be reached to confirm the device': async () => {
    chip.beginSession();
    const options = { clientId: chip.deviceId, username: chip.deviceId };
    expect(await tls('dev-ok', options)).toBe(0);
    const spy = vi.spyOn(KmsClient.prototype, 'status').mockRejectedValueOnce(new Error('fetch failed'));
    return withFault(spy, () => tls('dev-ok', options));
  },
  "the will's key cannot be claimed for it: the will does not open as a will of its topic, its key was spent by another session, the device is revoked, or this will was published already or discarded by a clean DISCONNECT (a replayed CONNECT; §9.5)":
    async () => {
      const connect = await device();
      const sealedFor = 'devices/dev-connack/up/elsewhere';
      const payload = Buffer.from(chip.sealWill(Buffer.from('gone'), sealedFor));
      return raw({ ...connect, will: { topic: 'devices/dev-connack/up/will', payload } });
    },
  "the key service cannot be reached to claim the will's key (§9.5)": async () => {
    const connect = await device();
    const topic = 'devices/dev-connack/up/will';
    const will = { topic, payload: Buffer.from(chip.sealWill(Buffer.from('gone'), topic)) };
    const spy = vi.spyOn(KmsClient.prototype, 'decKeys').mockRejectedValueOnce(new Error('fetch failed'));
    return withFault(spy, () => raw({ ...connect, will }));
  },
  'the session is persistent, has commands queued, and the key service, asked for its first downlink key, has revoked the device (§9.2)':
    async () => {
      const connect = await queuedSession();
      const revoked = new KmsHttpError(403, 'KMS_ERR_DEVICE_REVOKED', 'the device is revoked');
      const spy = vi.spyOn(KmsClient.prototype, 'encKeys').mockRejectedValueOnce(revoked);
      return withFault(spy, () => raw(connect));
    },
  'the session is persistent, has commands queued, and the key service cannot be reached for its first downlink key, or the device has used up its downlink claims for the minute (`maxDownlinkClaimsPerMinute`) (§9.2)':
    async () => {
      const connect = await queuedSession();
      const spy = vi.spyOn(KmsClient.prototype, 'encKeys').mockRejectedValueOnce(new Error('fetch failed'));
      return withFault(spy, () => raw(connect));
    },
  "the broker's own CONNECT handling failed (a fault, logged and counted)": async () => {
    const connect = await device();
    const spy = vi.spyOn(TokenAuthority.prototype, 'verify').mockImplementationOnce(() => {
      throw new Error('an unexpected fault');
    });
    return withFault(spy, () => raw(connect));
  },
  'none of the above: the CONNECT is accepted': async () => raw(await device()),
};

/** One scenario per item of §16.2: true when the connection closed without any CONNACK. */
const withoutConnack: Record<string, () => Promise<boolean>> = {
  'the first packet is not a CONNECT [MQTT-3.1.0-1]': async () => closedSilently([{ cmd: 'pingreq' } as Packet]),
  'a second CONNECT arrives on the connection [MQTT-3.1.0-2]': async () => {
    const { raw: r, returnCode } = await RawMqtt.connect(sys.mqttUrl, await device());
    expect(returnCode).toBe(0);
    r.send(connectPacket({ clientId: chip.deviceId }));
    await r.closedWithin(5000);
    return r.received.every((p) => p.cmd !== 'connack');
  },
  'more than 16,384 bytes arrive before the CONNACK (§15.1)': async () => {
    const connect = await device();
    const will = { topic: 'devices/dev-connack/up/will', payload: Buffer.alloc(16_384, 1) };
    return closedSilently([connectPacket({ ...connect, password: Buffer.from(connect.password!), will })]);
  },
  'a Remaining Length has more than four bytes (MQTT 3.1.1 §2.2.3)': async () =>
    closedSilently(Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x01])),
  'the protocol name is not `MQTT` (or `MQIsdp` with level 3)': async () => {
    const body = Buffer.concat([Buffer.from([0, 4]), Buffer.from('MQTX'), Buffer.from([4, 2, 0, 30, 0, 1, 0x78])]);
    return closedSilently(Buffer.concat([fixedHeader(0x10, body.length), body]));
  },
  'the protocol level is not 3, 4 or 5 (no CONNACK 1 for these)': async () => {
    const body = Buffer.concat([Buffer.from([0, 4]), Buffer.from('MQTT'), Buffer.from([6, 2, 0, 30, 0, 1, 0x78])]);
    return closedSilently(Buffer.concat([fixedHeader(0x10, body.length), body]));
  },
  'no CONNECT arrives within 30 seconds': async () => {
    // Not waited for here: the bound is Aedes' connectTimeout, read from the running broker.
    return (sys.broker.aedes as unknown as { connectTimeout: number }).connectTimeout === 30_000;
  },
};

/** Sends `what` as the start of a connection; true when the broker closes it without a CONNACK. */
async function closedSilently(what: Packet[] | Buffer): Promise<boolean> {
  const r = await RawMqtt.open(sys.mqttUrl);
  if (Buffer.isBuffer(what)) r.write(what);
  else for (const p of what) r.send(p);
  await r.closedWithin(5000);
  return r.received.every((p) => p.cmd !== 'connack');
}

describe('§16.1 CONNACK return codes', () => {
  it('the table has a row for each code the broker sends, and a scenario for each row', () => {
    expect(new Set(rows.map((r) => r.code))).toEqual(new Set([0, 1, 2, 3, 4, 5]));
    expect(rows.map((r) => r.when).sort()).toEqual(Object.keys(scenarios).sort());
  });

  it.each(rows.map((r) => [r.code, r.when] as const))('CONNACK %i: %s', async (code, when) => {
    expect(await scenarios[when]!()).toBe(code);
  });
});

describe('§16.2 refusals without a CONNACK', () => {
  it('a scenario for each item', () => {
    expect(closures.sort()).toEqual(Object.keys(withoutConnack).sort());
  });

  it.each(closures.map((c) => [c] as const))('%s', async (c) => {
    expect(await withoutConnack[c]!()).toBe(true);
  });
});
