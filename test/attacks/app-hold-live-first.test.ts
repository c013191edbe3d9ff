// A persistent application session whose stored queue holds messages the app may receive in plaintext and, behind
// them, one it may receive only sealed (`encryption: required`), on a real broker and key service. The app connects
// without a key; while Aedes is still sending the plaintext part of the queue, a live message needing the key
// arrives and makes the hold wait. The stored message needing the key must wait for the announcement too (not be
// skipped as if the hold had expired), and go out before the live one (docs/PROTOCOL.md §22.8). Also: a connection
// the broker closes while its queue waits leaves the connected-clients gauge as it was.
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { appSessionChallenge, appSessionKey, fillAppKeys } from '../../kms-api/app-session-client.js';
import { KmsClient } from '../../kms-api/client.js';
import {
  APP_SESSION_TOPIC,
  challengeMessage,
  EnvelopeKey,
  openEnvelope,
  parseEnvelope,
  ReplayWindow,
  signChallenge,
  unwrapSessionKey,
} from '../../protocol/index.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
const clients: MqttClient[] = [];
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(ok: () => boolean, what: string, ms = 8000): Promise<void> {
  for (const end = Date.now() + ms; !ok();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await pause(20);
  }
}

beforeAll(async () => {
  sys = await startTestSystem({ appHoldSeconds: 30 });
  const qrng = new Qrng();
  await fillAppKeys(
    sys.kms.admin,
    'qrng-live-first',
    Array.from({ length: 20 }, () => Buffer.from(qrng.bytes(16)).toString('base64')),
  );
  // Only the `sec` subtree must reach applications sealed; the rest of a device's telemetry may go in plaintext.
  const { version } = await sys.kms.admin.setPolicy('live-first-sec-sealed', {
    role: 'app',
    filter: 'devices/+/up/sec/#',
    encryption: 'required',
  });
  await until(() => sys.broker.policy.current.version >= version, 'the policy');
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
  await sys.stop();
});

/** A persistent app connection: what it receives (plaintext, or opened under its one key), and its announcement. */
async function appConnection(appId: string, secret: string, sm2: { privateKey: string; publicKey: string }) {
  const token = (await sys.kms.anon.clientToken(appId, secret)).access_token;
  const got: string[] = [];
  let key: EnvelopeKey | undefined;
  const replay = new ReplayWindow();
  let onMessage: (n: number) => void = () => undefined;
  const client = mqtt.connect(sys.mqttUrl, {
    clientId: `${appId}/s`,
    username: appId,
    password: token,
    reconnectPeriod: 0,
    clean: false,
  });
  clients.push(client);
  client.on('message', (topic, payload) => {
    if (topic === APP_SESSION_TOPIC) return;
    let text: string;
    try {
      const parsed = parseEnvelope(payload);
      const opened = openEnvelope(parsed, { key: key!, deviceId: appId, topic, direction: 'app-down', replay });
      text = `sealed:${Buffer.from(opened.payload).toString()}`;
    } catch {
      text = `plain:${payload.toString()}`;
    }
    got.push(text);
    onMessage(got.length);
  });
  await new Promise<void>((resolve, reject) => client.once('connect', () => resolve()).once('error', reject));
  const kms = new KmsClient(sys.kms.url, { token });
  const announce = async () => {
    const c = await appSessionChallenge(kms, 'test-broker');
    const message = challengeMessage({
      appId: c.app_id,
      kmeId: c.kme_id,
      brokerId: c.broker_id,
      challenge: Buffer.from(c.challenge, 'base64'),
      expiresAt: c.expires_at,
    });
    const sig = signChallenge(message, sm2.privateKey, sm2.publicKey);
    const issued = await appSessionKey(kms, 'test-broker', c.challenge, Buffer.from(sig).toString('base64'));
    key = new EnvelopeKey(unwrapSessionKey(Buffer.from(issued.wrapped_key, 'base64'), sm2.privateKey)!);
    await client.publishAsync(APP_SESSION_TOPIC, JSON.stringify({ key_ID: issued.key_ID, key_index: 0 }), { qos: 1 });
  };
  return { client, got, announce, onMessage: (f: (n: number) => void) => (onMessage = f) };
}

describe('a live delivery that makes the hold wait while the stored queue is read', () => {
  it('the stored message needing the key still goes out on this connection once announced, before the live one', async () => {
    const appId = 'rev2-engaged';
    const sm2 = sm2KeyPair();
    const { client_secret } = await sys.kms.admin.registerApp(appId, {
      publish: ['devices/+/down/#'],
      subscribe: ['devices/+/up/#'],
      sm2_public_key: sm2.publicKey,
    });
    const devId = 'dev-rev2-engaged';
    // The persistent session, subscribed, and gone.
    const first = await appConnection(appId, client_secret, sm2);
    await first.client.subscribeAsync(`devices/${devId}/up/#`, { qos: 1 });
    await first.client.endAsync();

    const chip = await sys.device(devId, 32);
    const dev = await sys.connectDevice(chip);
    clients.push(dev);
    const send = async (sub: string, text: string) => {
      const topic = `devices/${devId}/up/${sub}`;
      await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), { qos: 1 });
    };
    const plain = Array.from({ length: 200 }, (_, i) => `p${i}`);
    for (const t of plain) await send('plain', t);
    await send('sec', 'stored-secret');

    const app = await appConnection(appId, client_secret, sm2);
    // The live message needing the key arrives while the plaintext part of the queue is still being sent.
    let sentLive: Promise<void> | undefined;
    app.onMessage((n) => {
      if (n === 1) sentLive = send('sec', 'live-secret');
    });
    await until(() => app.got.length >= plain.length, 'the plaintext part of the queue');
    await sentLive;
    await pause(200);
    expect(app.got).toEqual(plain.map((p) => `plain:${p}`)); // nothing sealed before the key, nothing plaintext of sec
    await app.announce(); // well within appHoldSeconds (30 s)
    await until(() => app.got.length >= plain.length + 2, 'the two sealed messages', 3000).catch(() => undefined);
    await pause(200);
    expect(app.got.slice(plain.length)).toEqual(['sealed:stored-secret', 'sealed:live-secret']);
    await dev.endAsync();
  });

  // Pre-existing (the reader has ended quietly on close since the hold was made), found on the way: the reader ends
  // without an error when the connection closes while it waits for the key, so Aedes' emptyQueue pipeline completes
  // and its connect handler marks the closed client connected and emits `clientReady`. When the broker closed it
  // (a takeover, keepalive, revocation: client.close() emits `clientDisconnect` before the socket's `close` ends the
  // reader), `clientReady` comes last: server.ts counts it in broker_connected_clients (role "unknown", the state is
  // released) and never uncounts it.
  it('a connection taken over while its stored queue waits for the key leaves broker_connected_clients right', async () => {
    const appId = 'rev2-gauge';
    const sm2 = sm2KeyPair();
    const { client_secret } = await sys.kms.admin.registerApp(appId, {
      publish: ['devices/+/down/#'],
      subscribe: ['devices/+/up/#'],
      sm2_public_key: sm2.publicKey,
    });
    const devId = 'dev-rev2-gauge';
    const first = await appConnection(appId, client_secret, sm2);
    await first.client.subscribeAsync(`devices/${devId}/up/#`, { qos: 1 });
    await first.client.endAsync();
    const chip = await sys.device(devId, 32);
    const dev = await sys.connectDevice(chip);
    clients.push(dev);
    const topic = `devices/${devId}/up/sec/x`;
    await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from('secret'), topic)), { qos: 1 });
    await dev.endAsync();
    await pause(200);
    const gauge = async (role: string) => {
      const m = new RegExp(`^broker_connected_clients\\{role="${role}"\\} (\\d+)$`, 'm').exec(
        await sys.broker.registry.metrics(),
      );
      return Number(m?.[1] ?? 0);
    };
    const before = { app: await gauge('app'), unknown: await gauge('unknown') };
    const a = await appConnection(appId, client_secret, sm2); // never announces: the queue waits for the key
    await pause(300);
    const b = await appConnection(appId, client_secret, sm2); // takes the session over
    await b.announce();
    await until(() => b.got.includes('sealed:secret'), 'the stored message on the new connection');
    await pause(300);
    expect(a.client.connected).toBe(false);
    expect({ app: await gauge('app'), unknown: await gauge('unknown') }).toEqual({
      app: before.app + 1,
      unknown: before.unknown,
    });
    await b.client.endAsync();
  });
});
