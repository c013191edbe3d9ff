// Application session keys that run out (docs/PROTOCOL.md §22.6), with the real broker and key service: an app that
// only receives is told to rotate and misses nothing; one that does not rotate in time has its deliveries held, not
// dropped, until it does; age and bytes count as messages do; the notice reaches that one connection and no other.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AppMessageHandler, AppSession } from '../../device-sim/app-session.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import type { MqttClient } from 'mqtt';
import { appSessions, sealTelemetryForApps } from '../helpers/app-sessions.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const LIMIT = 8; // envelopes per key, both directions: the broker tells the app to rotate after 4
// Each test's app subscribes to its own device's telemetry alone: the broker-wide counters it reads are its own.
let sys: TestSystem;
const sessions: AppSession[] = [];

const apps = appSessions(() => sys);

const newApp = (appId: string, clean = true, got?: Received): Promise<AppSession> =>
  apps.start(appId, { clean, ...(got && { onMessage: collect(got) }) });

/** What the app opened, in arrival order, and each one's generation. */
type Received = Array<{ text: string; generation: number }>;
const collect =
  (got: Received): AppMessageHandler =>
  (_t, plaintext, envelope) =>
    got.push({ text: plaintext.toString(), generation: envelope.readUInt32BE(2) });
function received(app: AppSession): Received {
  const got: Received = [];
  app.onMessage(collect(got));
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
  await apps.closeAll();
  await Promise.all(sessions.map((s) => s.client.endAsync(true).catch(() => undefined)));
  await sys.stop();
});

/**
 * 12 messages for an app whose key seals LIMIT and which ignores the notice: the first LIMIT arrive, the rest wait
 * at the broker until `rotate`, then arrive under the next key; none is dropped.
 */
async function heldUntilRotated(deviceId: string, got: Received, rotate: () => Promise<void>): Promise<void> {
  const dropped = await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}');
  const { send, dev } = await device(deviceId);
  for (const i of range(12)) await send(i);
  await until(() => got.length >= LIMIT);
  await new Promise((r) => setTimeout(r, 300));
  expect(got.map((g) => g.text)).toEqual(range(LIMIT)); // the rest wait at the broker
  await rotate();
  await until(() => got.length >= 12);
  expect(got.map((g) => g.text)).toEqual(range(12));
  expect(got.slice(LIMIT).every((g) => g.generation === 1)).toBe(true);
  expect(await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}')).toBe(dropped);
  await dev.endAsync();
}

describe('an application key that runs out', () => {
  it('an app that only receives is told to rotate and gets every message, each generation sealing at most its limit', async () => {
    const app = await newApp('app-rx-only');
    await app.client.subscribeAsync('devices/dev-rx-only/up/#', { qos: 1 });
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

  it('a persistent app whose stored queue is several keys long gets all of it, in order, none dropped', async () => {
    const first = await newApp('app-queue', false);
    await first.client.subscribeAsync('devices/dev-queue/up/#', { qos: 1 });
    await first.close();
    const { send, dev } = await device('dev-queue');
    const n = 4 * LIMIT + 3; // more than the read-ahead of Aedes' queue pipeline (16), several keys' worth
    for (const i of range(n)) await send(i);
    await dev.endAsync();
    const dropped = await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}');

    const got: Received = [];
    const again = await newApp('app-queue', false, got);
    await until(() => got.length >= n);
    expect(got.map((g) => g.text)).toEqual(range(n));
    const perGeneration = new Map<number, number>();
    for (const g of got) perGeneration.set(g.generation, (perGeneration.get(g.generation) ?? 0) + 1);
    for (const count of perGeneration.values()) expect(count).toBeLessThanOrEqual(LIMIT);
    expect(await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}')).toBe(dropped);
    // Each delivered once: nothing more comes, on this connection or the next.
    await again.close();
    const more: Received = [];
    await newApp('app-queue', false, more);
    await new Promise((r) => setTimeout(r, 300));
    expect(more).toEqual([]);
  });

  it('an app that does not rotate in time: its deliveries wait for its next key, none dropped', async () => {
    const app = await newApp('app-slow');
    await app.client.subscribeAsync('devices/dev-slow/up/#', { qos: 1 });
    const got = received(app);
    const rotate = app.rotate.bind(app);
    app.rotate = () => Promise.resolve(); // it ignores the notice
    await heldUntilRotated('dev-slow', got, rotate);
    app.rotate = rotate;
  });

  it('a clean session that subscribed before its first announcement: what its spent key cannot seal waits too', async () => {
    // The subscription is made before the handshake, as a client that subscribes on connect does.
    const handshake = Object.getOwnPropertyDescriptor(AppSession.prototype, 'rotate')!.value as AppSession['rotate'];
    AppSession.prototype.rotate = async function (this: AppSession) {
      AppSession.prototype.rotate = handshake;
      await this.client.subscribeAsync('devices/dev-early/up/#', { qos: 1 });
      return handshake.call(this);
    };
    const got: Received = [];
    const app = await newApp('app-early', true, got);
    app.rotate = () => Promise.resolve(); // it ignores the notice
    await heldUntilRotated('dev-early', got, () => handshake.call(app));
  });

  it('one that never rotates: the hold expires after appHoldSeconds and says so; the connection goes on', async () => {
    const app = await newApp('app-never');
    await app.client.subscribeAsync('devices/dev-never/up/#', { qos: 1 });
    const got = received(app);
    app.rotate = () => Promise.resolve();
    const dropped = await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}');
    const { send, dev } = await device('dev-never');
    for (const i of range(LIMIT + 2)) await send(i);
    await until(() => /"client":"app-never\/session".*"outcome":"expired"/.test(sys.logs()), 10_000);
    expect(got.map((g) => g.text)).toEqual(range(LIMIT));
    // A clean session has no store to leave them in: the two are lost, and counted and logged as such.
    expect(sys.logs()).toMatch(/"client":"app-never\/session".*"outcome":"expired".*"leftStored":0,"dropped":2/);
    expect(await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}')).toBe(dropped + 2);
    expect(app.client.connected).toBe(true);
    await dev.endAsync();
  });

  it('bytes count: a key with half its bytes used is rotated away from', async () => {
    const app = await newApp('app-bytes');
    await app.client.subscribeAsync('devices/dev-bytes/up/#', { qos: 1 });
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
    // Another app with a session of its own, on other telemetry: its key is barely used, so no notice is its own.
    const other = await newApp('app-watcher');
    await other.client.subscribeAsync('devices/dev-watched/up/#', { qos: 1 });
    const otherGot = received(other);
    const otherNotices: string[] = [];
    other.client.on('message', (t, payload) => t === '$qkey/app-session' && otherNotices.push(payload.toString()));
    // One without a session may not subscribe to the session topic at all.
    const plain = await sys.connectApp('app-plain-watcher', { subscribe: ['devices/+/up/#'] });
    await expect(plain.subscribeAsync('$qkey/app-session', { qos: 0 })).rejects.toThrow(/Subscribe error/); // 0x80
    const told = await device('dev-told');
    const watched = await device('dev-watched');
    await watched.send('control'); // the other connection receives: it would see a notice sent to it
    for (const i of range(LIMIT)) await told.send(i);
    await until(() => app.keyIndex >= 1 && got.length >= LIMIT && otherGot.length === 1);
    expect(otherGot.map((g) => g.text)).toEqual(['control']);
    expect(otherNotices).toEqual([]);
    expect(other.keyIndex).toBe(0);
    await plain.endAsync();
    await told.dev.endAsync();
    await watched.dev.endAsync();
  });
});

describe('an application key that runs out by age', () => {
  let aged: TestSystem;
  afterAll(() => aged?.stop());

  it('is rotated away from at half its age: the next delivery after that tells the app, which rotates', async () => {
    aged = await startTestSystem({ rotation: { messages: 1000, bytes: 1 << 20, seconds: 2 } });
    await sealTelemetryForApps(aged, 60);
    const sm2 = sm2KeyPair();
    const { client_secret } = await aged.kms.admin.registerApp('app-aged', {
      subscribe: ['devices/+/up/#'],
      sm2_public_key: sm2.publicKey,
    });
    const got: Received = [];
    const app = await AppSession.start({
      brokerUrl: aged.mqttUrl,
      kmsUrl: aged.kms.url,
      brokerId: 'test-broker',
      appId: 'app-aged',
      secret: client_secret,
      sm2,
      onMessage: collect(got),
    });
    sessions.push(app);
    await app.client.subscribeAsync('devices/dev-aged/up/#', { qos: 1 });
    const chip = await aged.device('dev-aged', 16);
    const dev = await aged.connectDevice(chip);
    const topic = 'devices/dev-aged/up/t';
    const send = (text: string) =>
      dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), { qos: 1 });
    await send('young');
    await until(() => got.length === 1);
    expect(app.keyIndex).toBe(0); // one message of 1000, well within its age
    await new Promise((r) => setTimeout(r, 1100)); // past half of its two seconds
    await send('old');
    await until(() => app.keyIndex === 1);
    await send('new');
    await until(() => got.length === 3);
    expect(got).toEqual([
      { text: 'young', generation: 0 },
      { text: 'old', generation: 0 },
      { text: 'new', generation: 1 },
    ]);
    await dev.endAsync();
  });
});
