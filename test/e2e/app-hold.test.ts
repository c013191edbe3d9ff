// A persistent application session on `encryption: required` topics (docs/PROTOCOL.md §22.8): what was queued while
// it was away waits for its session key, then arrives sealed, in order; nothing is lost, nothing goes out plaintext,
// whether the app is killed before announcing, or never announces within the hold.
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppSession } from '../../device-sim/app-session.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { parseEnvelope } from '../../protocol/index.js';
import { sealTelemetryForApps } from '../helpers/app-sessions.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const HOLD_SECONDS = 3;
let sys: TestSystem;
const ACL = { publish: ['devices/+/down/#'], subscribe: ['devices/+/up/#'] };
const open: MqttClient[] = [];

interface App {
  appId: string;
  secret: string;
  sm2: { privateKey: string; publicKey: string };
}

async function registerApp(appId: string): Promise<App> {
  const sm2 = sm2KeyPair();
  const { client_secret } = await sys.kms.admin.registerApp(appId, { ...ACL, sm2_public_key: sm2.publicKey });
  return { appId, secret: client_secret, sm2 };
}

/** What a sealed, persistent session of `app` received: plaintexts in order, and every raw payload. */
async function sealedSession(app: App) {
  const opened: string[] = [];
  const raw: Buffer[] = [];
  const dup: boolean[] = [];
  const session = await AppSession.start({
    brokerUrl: sys.mqttUrl,
    kmsUrl: sys.kms.url,
    brokerId: 'test-broker',
    appId: app.appId,
    secret: app.secret,
    sm2: app.sm2,
    clean: false,
    // Only what opened under the session's key gets here (anything else is counted in `refused`).
    onMessage: (_t, plaintext, envelope, packet) => {
      opened.push(plaintext.toString());
      raw.push(Buffer.from(envelope));
      dup.push(packet.dup);
    },
  });
  open.push(session.client);
  return { session, opened, raw, dup };
}

/** The app's persistent session connected without a session key (never announcing one). */
async function unsealedConnection(app: App) {
  const { access_token } = await sys.kms.anon.clientToken(app.appId, app.secret);
  const seen: Buffer[] = [];
  const client = mqtt.connect(sys.mqttUrl, {
    clientId: `${app.appId}/session`,
    username: app.appId,
    password: access_token,
    reconnectPeriod: 0,
    clean: false,
  });
  client.on('message', (_t, payload) => seen.push(Buffer.from(payload)));
  await new Promise<void>((resolve, reject) => client.once('connect', () => resolve()).once('error', reject));
  open.push(client);
  return { client, seen };
}

async function telemetry(chip: SecurityChip, texts: string[]) {
  const dev = await sys.connectDevice(chip);
  const topic = `devices/${chip.deviceId}/up/t`;
  for (const text of texts)
    await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), { qos: 1 });
  await dev.endAsync();
}

async function until(done: () => boolean, what: string, ms = 8000) {
  for (const end = Date.now() + ms; !done();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Every raw delivery is an envelope and none carries a plaintext in the clear. */
function allSealed(raw: Buffer[], texts: string[]) {
  for (const payload of raw) {
    expect(() => parseEnvelope(payload)).not.toThrow();
    for (const t of texts) expect(payload.includes(Buffer.from(t))).toBe(false);
  }
}

beforeAll(async () => {
  sys = await startTestSystem({ appHoldSeconds: HOLD_SECONDS });
  await sealTelemetryForApps(sys, 20);
});
afterAll(async () => {
  await Promise.all(open.map((c) => c.endAsync(true).catch(() => undefined)));
  await sys.stop();
});

describe('a persistent application session on required topics', () => {
  it('receives what was queued while it was away, sealed under its new key, in order, none plaintext', async () => {
    const app = await registerApp('app-hold-a');
    const first = await sealedSession(app);
    await first.session.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    await first.session.close();

    const chip = await sys.device('dev-hold-a', 16);
    const texts = ['t0', 't1', 't2', 't3', 't4', 't5'];
    await telemetry(chip, texts);

    const again = await sealedSession(app);
    await until(() => again.opened.length >= texts.length, 'the queued telemetry');
    expect(again.opened).toEqual(texts);
    expect(again.session.refused).toBe(0);
    expect(again.raw).toHaveLength(texts.length);
    allSealed(again.raw, texts);
    // Delivered once: nothing more comes.
    await new Promise((r) => setTimeout(r, 300));
    expect(again.opened).toEqual(texts);
  });

  it('killed after CONNACK and before announcing: nothing is delivered, nothing is lost', async () => {
    const app = await registerApp('app-hold-kill');
    const first = await sealedSession(app);
    await first.session.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    await first.session.close();
    const chip = await sys.device('dev-hold-kill', 16);
    const texts = ['k0', 'k1', 'k2', 'k3'];
    await telemetry(chip, texts);

    // Reconnects without a session key, and dies with the queue held (the worst moment: before the announcement).
    const bare = await unsealedConnection(app);
    await new Promise((r) => setTimeout(r, 200));
    bare.client.stream.destroy();
    expect(bare.seen).toEqual([]);
    await new Promise((r) => setTimeout(r, 200));

    const again = await sealedSession(app);
    await until(() => again.opened.length >= texts.length, 'the queued telemetry');
    expect(again.opened).toEqual(texts);
    allSealed(again.raw, texts);
    expect(again.session.refused).toBe(0);
  });

  it('telemetry published while it reconnects, before its announcement, follows the queue in order', async () => {
    const app = await registerApp('app-hold-live');
    const first = await sealedSession(app);
    await first.session.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    await first.session.close();
    const chip = await sys.device('dev-hold-live', 16);
    await telemetry(chip, ['q0', 'q1', 'q2']);

    const starting = sealedSession(app);
    await telemetry(chip, ['l0', 'l1', 'l2']); // races the handshake: held live, or queued, never dropped
    const again = await starting;
    const texts = ['q0', 'q1', 'q2', 'l0', 'l1', 'l2'];
    await until(() => again.opened.length >= texts.length, 'all telemetry');
    expect(again.opened).toEqual(texts);
    allSealed(again.raw, texts);
  });

  it('a delivery received sealed and never acknowledged comes again after the reconnect: DUP 1, sealed anew', async () => {
    const app = await registerApp('app-hold-dup');
    const first = await sealedSession(app);
    await first.session.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    // mqtt.js acknowledges a QoS 1 delivery when handleMessage calls back: this one never does.
    first.session.client.handleMessage = () => undefined;
    const chip = await sys.device('dev-hold-dup', 16);
    await telemetry(chip, ['u0']);
    await until(() => first.opened.length === 1, 'the live delivery');
    expect(first.dup).toEqual([false]);
    first.session.client.stream.destroy(); // gone without its PUBACK

    const again = await sealedSession(app);
    await until(() => again.opened.length >= 1, 'the redelivery');
    expect(again.opened).toEqual(['u0']);
    expect(again.dup).toEqual([true]); // [MQTT-4.4.0-1] sent again, [MQTT-3.3.1-1] with DUP
    expect(again.raw[0]!.equals(first.raw[0]!)).toBe(false); // a new envelope under the new key (§19)
    allSealed(again.raw, ['u0']);
    // Acknowledged this time: a further reconnect gets nothing.
    await again.session.close();
    const third = await sealedSession(app);
    await new Promise((r) => setTimeout(r, 300));
    expect(third.opened).toEqual([]);
  });

  it('never announcing within the hold: nothing plaintext, and the queue waits for the next connection', async () => {
    const app = await registerApp('app-hold-expire');
    const first = await sealedSession(app);
    await first.session.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    await first.session.close();
    const chip = await sys.device('dev-hold-expire', 16);
    await telemetry(chip, ['e0', 'e1']);

    const bare = await unsealedConnection(app);
    await telemetry(chip, ['e2']); // live while it waits
    await new Promise((r) => setTimeout(r, HOLD_SECONDS * 1000 + 500));
    await telemetry(chip, ['e3']); // live after the hold expired
    await new Promise((r) => setTimeout(r, 200));
    expect(bare.seen).toEqual([]);
    await bare.client.endAsync();
    expect(sys.logs()).toContain('"outcome":"expired"');

    const again = await sealedSession(app);
    const texts = ['e0', 'e1', 'e2', 'e3'];
    await until(() => again.opened.length >= texts.length, 'the telemetry kept in the store');
    expect(again.opened).toEqual(texts);
    allSealed(again.raw, texts);
  });
});
