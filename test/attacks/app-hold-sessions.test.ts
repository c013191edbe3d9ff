// Application session holds against the real broker and key service (docs/PROTOCOL.md §22.6, §22.8), memory
// persistence: overlapping subscriptions, the app's own publishes and a slow store while its stored queue is sent,
// QoS 0 behind a spent key, what expiry reports as left stored, and a connection that ends while it waits.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import mqtt, { type MqttClient } from 'mqtt';
import { KmsClient } from '../../kms-api/client.js';
import { type AppMessageHandler, AppSession } from '../../device-sim/app-session.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { appSessions, sealTelemetryForApps } from '../helpers/app-sessions.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const LIMIT = 8; // envelopes per key, both directions
let sys: TestSystem;

type Received = Array<{ text: string; generation: number; qos: number; dup: boolean }>;
const collect =
  (got: Received): AppMessageHandler =>
  (_t, plaintext, envelope, packet) =>
    got.push({ text: plaintext.toString(), generation: envelope.readUInt32BE(2), qos: packet.qos, dup: packet.dup });

const apps = appSessions(() => sys, { subscribe: ['devices/+/up/#'], publish: ['apps/+/out'] });
const newApp = (appId: string, clean: boolean, got: Received): Promise<AppSession> =>
  apps.start(appId, { clean, onMessage: collect(got) });

async function device(
  id: string,
): Promise<{ chip: SecurityChip; dev: MqttClient; send(text: string, qos?: 0 | 1): Promise<void> }> {
  const chip = await sys.device(id, 16);
  const dev = await sys.connectDevice(chip);
  const topic = `devices/${id}/up/t`;
  return {
    chip,
    dev,
    send: async (text, qos = 1) =>
      void (await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), { qos })),
  };
}

async function until(ok: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 20));
  }
}
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const range = (n: number) => Array.from({ length: n }, (_, i) => String(i));
const metric = async (name: string) => {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await sys.broker.registry.metrics());
  return Number(m?.[1] ?? 0);
};

/** The real handshake; while `blocked`, a rotation notice starts none (an app slow to reach its key service). */
const handshake = Object.getOwnPropertyDescriptor(AppSession.prototype, 'rotate')!.value as AppSession['rotate'];
let firstOnly = false;
const started = new WeakSet<AppSession>();
function blockRotationAfterFirst(): () => void {
  firstOnly = true;
  AppSession.prototype.rotate = function (this: AppSession) {
    if (firstOnly && started.has(this)) return Promise.resolve();
    started.add(this);
    return handshake.call(this);
  };
  return () => {
    firstOnly = false;
    AppSession.prototype.rotate = handshake;
  };
}

beforeAll(async () => {
  sys = await startTestSystem({
    rotation: { messages: LIMIT, bytes: 1 << 20, seconds: 3600 },
    appHoldSeconds: 2,
  });
  await sealTelemetryForApps(sys, 80);
});
afterAll(async () => {
  AppSession.prototype.rotate = handshake;
  await apps.closeAll();
  await sys.stop();
});

describe('seals ahead: what the stored-queue reader lets through must be what the key can seal', () => {
  it('overlapping subscriptions (memory store: both copies share one payload Buffer): the queue arrives whole, in order, on this connection', async () => {
    const first = await newApp('rv-overlap', false, []);
    // Two filters matching the same topic: Aedes queues one copy per filter (queue-bound.ts admit()).
    await first.client.subscribeAsync('devices/rv-dev-overlap/up/#', { qos: 1 });
    await first.client.subscribeAsync('devices/rv-dev-overlap/up/t', { qos: 1 });
    await first.close();
    const { send, dev } = await device('rv-dev-overlap');
    const n = 6; // 12 stored copies, 6 distinct payload Buffers: more copies than one key (8) may seal
    for (const i of range(n)) await send(i);
    await dev.endAsync();

    const release = blockRotationAfterFirst();
    try {
      const got: Received = [];
      const again = await newApp('rv-overlap', false, got);
      await pause(600); // the reader stopped (or should have) at the 9th copy; the app has not rotated yet
      await handshake.call(again);
      await pause(600);
      const expected = range(n).flatMap((i) => [i, i]);
      // The two copies of each message share one payload Buffer (the memory store): each is counted on its own.
      expect(got.map((g) => g.text)).toEqual(expected);
    } finally {
      release();
    }
  });

  it('an app publishing (app-up) while its stored queue drains over a slow store: nothing is left behind out of order', async () => {
    // A store round trip per queued message (Redis does one for every outgoingUpdate): the reader runs further ahead.
    const store = (sys.broker.aedes as unknown as { persistence: Record<string, unknown> }).persistence;
    const update = store.outgoingUpdate as (c: { id: string }, p: object) => Promise<unknown>;
    store.outgoingUpdate = async (c: { id: string }, p: object) => {
      if (c.id === 'rv-race/session') await pause(40);
      return update(c, p);
    };
    const first = await newApp('rv-race', false, []);
    await first.client.subscribeAsync('devices/rv-dev-race/up/#', { qos: 1 });
    await first.close();
    const { send, dev } = await device('rv-dev-race');
    const n = 12;
    for (const i of range(n)) await send(i);
    await dev.endAsync();

    const release = blockRotationAfterFirst();
    try {
      const got: Received = [];
      const again = await newApp('rv-race', false, got);
      // The app sends one command as soon as its key is announced: the key opens it, one of its 8 uses.
      await again.publish('apps/rv-race/out', 'hello', { qos: 1 });
      await pause(800);
      await handshake.call(again);
      await until(() => got.length >= n - 1);
      await pause(400);
      // The app's own publish uses the key up between the hold's look at a stored message and its seal: that message
      // goes again under the next key, in its place, on this connection.
      expect.soft(got.map((g) => g.text)).toEqual(range(n));
      const later: Received = [];
      await again.close();
      AppSession.prototype.rotate = handshake;
      await newApp('rv-race', false, later);
      await pause(400);
      // Nothing is left for a later connection (where it would come after 8..11, with DUP 1 though never sent).
      expect(later).toEqual([]);
    } finally {
      release();
      store.outgoingUpdate = update;
    }
  });
});

describe('a stored message the hook could not seal is not kept behind with a packet identifier', () => {
  it('it goes again on this connection, so no later delivery can reuse its identifier and clear it', async () => {
    const store = (sys.broker.aedes as unknown as { persistence: Record<string, unknown> }).persistence;
    const update = store.outgoingUpdate as (c: { id: string }, p: object) => Promise<unknown>;
    store.outgoingUpdate = async (c: { id: string }, p: object) => {
      if (c.id === 'rv-wrap/session') await pause(40);
      return update(c, p);
    };
    const first = await newApp('rv-wrap', false, []);
    await first.client.subscribeAsync('devices/rv-dev-wrap/up/#', { qos: 1 });
    await first.close();
    const { send, dev } = await device('rv-dev-wrap');
    for (const i of range(12)) await send(i);

    const release = blockRotationAfterFirst();
    const got: Received = [];
    try {
      // As in the app-up test above: '7' is let through and the app's publish uses the key up before its seal.
      const again = await newApp('rv-wrap', false, got);
      await again.publish('apps/rv-wrap/out', 'hello', { qos: 1 });
      await pause(800);
      release();
      await handshake.call(again);
      await until(() => got.length >= 12);
      expect(got.map((g) => g.text)).toEqual(range(12));
      await pause(200); // the app's PUBACKs
      store.outgoingUpdate = update;
      const stored: Array<{ payload: Buffer; messageId?: number }> = [];
      const read = store.outgoingStream as (c: object) => AsyncIterable<{ payload: Buffer; messageId?: number }>;
      for await (const p of read({ id: 'rv-wrap/session', clean: true })) stored.push(p);
      expect(stored).toEqual([]); // all acknowledged: nothing kept with an identifier
      await send('z');
      await until(() => got.some((g) => g.text === 'z'));
      await again.close();
      const later: Received = [];
      await newApp('rv-wrap', false, later);
      await pause(500);
      expect(later).toEqual([]);
    } finally {
      release();
      store.outgoingUpdate = update;
      await dev.endAsync();
    }
  });
});

describe('QoS 0 through the gated deliverQoS (Aedes calls the gated deliver0 from it: the hold runs twice)', () => {
  it('a QoS 0 message held behind a spent key is delivered, in order, when the app rotates', async () => {
    const got: Received = [];
    const app = await newApp('rv-qos0', true, got);
    await app.client.subscribeAsync('devices/rv-dev-qos0/up/#', { qos: 1 });
    const rotate = app.rotate.bind(app);
    app.rotate = () => Promise.resolve(); // slow to rotate
    const { send, dev } = await device('rv-dev-qos0');
    for (const i of range(LIMIT)) await send(i);
    await until(() => got.length >= LIMIT);
    await send('a', 0); // held: the key is spent
    await send('b', 1); // held behind it
    await pause(200);
    expect(got.map((g) => g.text)).toEqual(range(LIMIT));
    await rotate();
    await pause(500);
    // Were 'a' held twice (Aedes' deliverQoS calls the gated deliver0), 'b' would go out first and Aedes' duplicate
    // check (brokerCounter of 'a' < 'b') would drop 'a' silently.
    expect(got.map((g) => g.text)).toEqual([...range(LIMIT), 'a', 'b']);
    await dev.endAsync();
  });
});

describe('what the hold reports as left stored is in the store', () => {
  it('a persistent app on a QoS 0 subscription: QoS 1 messages lost at expiry are counted dropped_no_key, not left stored', async () => {
    const got: Received = [];
    const app = await newApp('rv-sub0', false, got);
    // A QoS 0 subscription: Aedes queues no copy for it, whatever the QoS of the message.
    await app.client.subscribeAsync('devices/rv-dev-sub0/up/#', { qos: 0 });
    app.rotate = () => Promise.resolve(); // never rotates
    const dropped = await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}');
    const { send, dev } = await device('rv-dev-sub0');
    for (const i of range(LIMIT + 2)) await send(i, 1);
    await until(() => /"client":"rv-sub0\/session".*"outcome":"expired"/.test(sys.logs()), 10_000);
    expect(got.map((g) => g.text)).toEqual(range(LIMIT));
    // The hold says they are "leftStored": 2 and counts no drop. They are not stored: the next connection gets nothing.
    await app.client.endAsync();
    const next: Received = [];
    await newApp('rv-sub0', false, next);
    await pause(400);
    expect(next).toEqual([]); // holds: they are gone
    // Not in the store (a QoS 0 subscription's copies are not queued): lost, and counted so.
    expect(await metric('broker_downlink_total\\{outcome="dropped_no_key"\\}')).toBe(dropped + 2);
    await dev.endAsync();
  });
});

describe('a connection that ends while its stored queue waits for the key', () => {
  it('leaves broker_connected_clients as it was', async () => {
    const first = await newApp('rv-gauge', false, []);
    await first.client.subscribeAsync('devices/rv-dev-gauge/up/#', { qos: 1 });
    await first.close();
    const { send, dev } = await device('rv-dev-gauge');
    await send('0');
    await dev.endAsync();
    await pause(200);
    const gauge = () => metric('broker_connected_clients\\{role="app"\\}');
    const before = await gauge();
    expect(before).toBeGreaterThan(0); // the other apps of this file are still connected: the metric is read
    // Reconnects, and goes away before announcing a key: the stored queue was waiting for one (§22.8).
    const { access_token } = await new KmsClient(sys.kms.url).clientToken('rv-gauge', apps.secretOf('rv-gauge'));
    const c = await mqtt.connectAsync(sys.mqttUrl, {
      clientId: 'rv-gauge/session',
      username: 'rv-gauge',
      password: access_token,
      reconnectPeriod: 0,
      clean: false,
    });
    await pause(200);
    await c.endAsync(true);
    await pause(500);
    // The hold's reader, ending on close, must not let Aedes finish CONNECT for the closed client ('clientReady'
    // after 'clientDisconnect' would leave the dead connection in the gauge).
    expect(await gauge()).toBe(before);
  });
});
