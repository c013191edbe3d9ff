// Application session keys that run out (docs/PROTOCOL.md §22.6), with the real broker and key service: an app that
// only receives is told to rotate and misses nothing; one that does not rotate in time has its deliveries held, not
// dropped, until it does; age and bytes count as messages do; the notice reaches that one connection and no other.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppSession } from '../../device-sim/app-session.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import type { MqttClient } from 'mqtt';
import { sealTelemetryForApps } from '../helpers/app-sessions.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const LIMIT = 8; // envelopes per key, both directions: the broker tells the app to rotate after 4
let sys: TestSystem;
const sessions: AppSession[] = [];

async function newApp(appId: string): Promise<AppSession> {
  const sm2 = sm2KeyPair();
  const { client_secret } = await sys.kms.admin.registerApp(appId, {
    subscribe: ['devices/+/up/#'],
    sm2_public_key: sm2.publicKey,
  });
  const session = await AppSession.start({
    brokerUrl: sys.mqttUrl,
    kmsUrl: sys.kms.url,
    brokerId: 'test-broker',
    appId,
    secret: client_secret,
    sm2,
  });
  sessions.push(session);
  return session;
}

/** What the app opened, in arrival order, and each one's generation. */
function received(app: AppSession): Array<{ text: string; generation: number }> {
  const got: Array<{ text: string; generation: number }> = [];
  app.onMessage((_t, plaintext, envelope) =>
    got.push({ text: plaintext.toString(), generation: envelope.readUInt32BE(2) }),
  );
  return got;
}

async function device(id: string): Promise<{ chip: SecurityChip; dev: MqttClient; send(text: string): Promise<void> }> {
  const chip = await sys.device(id, 16);
  const dev = await sys.connectDevice(chip);
  const topic = `devices/${id}/up/t`;
  return {
    chip,
    dev,
    send: async (text) =>
      void (await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), { qos: 1 })),
  };
}

async function until(ok: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const metric = async (name: string) => {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await sys.broker.registry.metrics());
  return Number(m?.[1] ?? 0);
};
const range = (n: number) => Array.from({ length: n }, (_, i) => String(i));

beforeAll(async () => {
  sys = await startTestSystem({
    rotation: { messages: LIMIT, bytes: 4096, seconds: 3600 },
    appHoldSeconds: 2,
  });
  await sealTelemetryForApps(sys, 60); // apps receive device telemetry only sealed
});
afterAll(async () => {
  await Promise.all(sessions.map((s) => s.client.endAsync(true).catch(() => undefined)));
  await sys.stop();
});

describe('an application key that runs out', () => {
  it('an app that only receives is told to rotate and gets every message, each generation sealing at most its limit', async () => {
    const app = await newApp('app-rx-only');
    await app.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    const got = received(app);
    const { send, dev } = await device('dev-rx-only');
    const notices = await metric('broker_app_rotation_notices_total');
    for (const i of range(40)) await send(i);
    await until(() => got.length >= 40);
    expect(got.map((g) => g.text)).toEqual(range(40));
    expect(app.refused).toBe(0);
    const perGeneration = new Map<number, number>();
    for (const g of got) perGeneration.set(g.generation, (perGeneration.get(g.generation) ?? 0) + 1);
    for (const n of perGeneration.values()) expect(n).toBeLessThanOrEqual(LIMIT);
    expect(app.keyIndex).toBeGreaterThanOrEqual(Math.ceil(40 / LIMIT) - 1);
    expect(await metric('broker_app_rotation_notices_total')).toBeGreaterThanOrEqual(notices + app.keyIndex);
    await dev.endAsync();
  });

  it('an app that does not rotate in time: its deliveries wait for its next key, none dropped', async () => {
    const app = await newApp('app-slow');
    await app.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    const got = received(app);
    const rotate = app.rotate.bind(app);
    app.rotate = () => Promise.resolve(); // it ignores the notice
    const dropped = await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}');
    const { send, dev } = await device('dev-slow');
    for (const i of range(12)) await send(i);
    await until(() => got.length >= LIMIT);
    await new Promise((r) => setTimeout(r, 300));
    expect(got.map((g) => g.text)).toEqual(range(LIMIT)); // the rest wait at the broker
    await rotate();
    await until(() => got.length >= 12);
    expect(got.map((g) => g.text)).toEqual(range(12));
    expect(got.slice(LIMIT).every((g) => g.generation === 1)).toBe(true);
    expect(await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}')).toBe(dropped);
    app.rotate = rotate;
    await dev.endAsync();
  });

  it('one that never rotates: the hold expires after appHoldSeconds and says so; the connection goes on', async () => {
    const app = await newApp('app-never');
    await app.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    const got = received(app);
    app.rotate = () => Promise.resolve();
    const { send, dev } = await device('dev-never');
    for (const i of range(LIMIT + 2)) await send(i);
    await until(() => /"client":"app-never\/session".*"outcome":"expired"/.test(sys.logs()), 10_000);
    expect(got.map((g) => g.text)).toEqual(range(LIMIT));
    expect(app.client.connected).toBe(true);
    await dev.endAsync();
  });

  it('age and bytes count: a key half its age or with half its bytes used is rotated away from', async () => {
    const app = await newApp('app-bytes');
    await app.client.subscribeAsync('devices/+/up/#', { qos: 1 });
    const got = received(app);
    const { send, dev } = await device('dev-bytes');
    await send('x'.repeat(2100)); // over half of the 4096 bytes a key may carry
    await until(() => app.keyIndex === 1);
    await send('y');
    await until(() => got.length === 2);
    expect(got.map((g) => g.generation)).toEqual([0, 1]);
    await dev.endAsync();
  });

  it('the notice goes to the connection whose key it names: another app cannot subscribe to it or receive it', async () => {
    const app = await newApp('app-told');
    await app.client.subscribeAsync('devices/dev-told/up/#', { qos: 1 });
    const got = received(app);
    const seen: string[] = [];
    const watcher = await sys.connectApp('app-watcher', { subscribe: ['devices/+/up/#'] });
    watcher.on('message', (t) => seen.push(t));
    await watcher.subscribeAsync('devices/+/up/#', { qos: 0 });
    await expect(watcher.subscribeAsync('$qkey/app-session', { qos: 0 })).rejects.toThrow(/Subscribe error/); // 0x80
    const { send, dev } = await device('dev-told');
    for (const i of range(LIMIT)) await send(i);
    await until(() => app.keyIndex >= 1 && got.length >= LIMIT);
    // It holds no session key, so the policy gives it no telemetry either: it received nothing at all.
    expect(seen).toEqual([]);
    await watcher.endAsync();
    await dev.endAsync();
  });
});
