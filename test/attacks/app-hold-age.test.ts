// A persistent application's key ages out while its stored queue is being sent over a slow store (docs/PROTOCOL.md
// §22.8): what the key could not seal after all goes again under the next key, on this connection, in order, never
// left behind for a later connection with DUP 1 although it was never sent [MQTT-3.3.1-1].
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import { AppSession } from '../../device-sim/app-session.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { sealTelemetryForApps } from '../helpers/app-sessions.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
const open: MqttClient[] = [];
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const range = (n: number) => Array.from({ length: n }, (_, i) => String(i));
const handshake = Object.getOwnPropertyDescriptor(AppSession.prototype, 'rotate')!.value as AppSession['rotate'];

beforeAll(async () => {
  // A key lives 2 s; messages and bytes are no limit here.
  sys = await startTestSystem({ rotation: { messages: 100_000, bytes: 1 << 30, seconds: 2 }, appHoldSeconds: 20 });
  await sealTelemetryForApps(sys, 20);
});
afterAll(async () => {
  AppSession.prototype.rotate = handshake;
  await Promise.all(open.map((c) => c.endAsync(true).catch(() => undefined)));
  await sys.stop();
});

it('a key that ages out while its queue is being sent: the rest arrives under the next key, on this connection, in order', async () => {
  const sm2 = sm2KeyPair();
  const { client_secret } = await sys.kms.admin.registerApp('rv-aged', {
    subscribe: ['devices/+/up/#'],
    sm2_public_key: sm2.publicKey,
  });
  const start = (onMessage?: (t: string, p: Buffer) => void) =>
    AppSession.start({
      brokerUrl: sys.mqttUrl,
      kmsUrl: sys.kms.url,
      brokerId: 'test-broker',
      appId: 'rv-aged',
      secret: client_secret,
      sm2,
      clean: false,
      ...(onMessage && { onMessage }),
    });
  const first = await start();
  await first.client.subscribeAsync('devices/rv-dev-aged/up/#', { qos: 1 });
  await first.close();

  const chip = await sys.device('rv-dev-aged', 16);
  const dev = await sys.connectDevice(chip);
  open.push(dev);
  const topic = 'devices/rv-dev-aged/up/t';
  const send = async (text: string) =>
    void (await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), { qos: 1 }));
  const n = 45;
  for (const i of range(n)) await send(i);

  // A store round trip of 100 ms per queued message (a remote store under load), for this client alone.
  const store = (sys.broker.aedes as unknown as { persistence: Record<string, unknown> }).persistence;
  const update = store.outgoingUpdate as (c: { id: string }, p: object) => Promise<unknown>;
  store.outgoingUpdate = async (c: { id: string }, p: object) => {
    if (c.id === 'rv-aged/session') await pause(100);
    return update(c, p);
  };
  // The app's handshakes are slow (its key service is far): it rotates 3 s after each key, not at the notice.
  let firstDone = false;
  AppSession.prototype.rotate = function (this: AppSession) {
    return firstDone ? Promise.resolve() : handshake.call(this);
  };
  try {
    const got: string[] = [];
    const again = await start((_t, p) => got.push(p.toString()));
    firstDone = true;
    open.push(again.client);
    await pause(3000); // key 0 aged out at 2 s with about a pipeline's worth let through: those are kept
    AppSession.prototype.rotate = handshake; // from now on it follows the notices at once
    await handshake.call(again);
    await pause(3000);
    // Everything on this connection, in order, though the key aged out with messages on their way to the seal.
    expect.soft(got).toEqual(range(n));
    await again.close();
    const later: Array<{ text: string; dup: boolean }> = [];
    const third = await AppSession.start({
      brokerUrl: sys.mqttUrl,
      kmsUrl: sys.kms.url,
      brokerId: 'test-broker',
      appId: 'rv-aged',
      secret: client_secret,
      sm2,
      clean: false,
      onMessage: (_t, p, _e, h) => later.push({ text: p.toString(), dup: h.dup }),
    });
    open.push(third.client);
    await pause(2500);
    // Nothing left for the next connection.
    expect(later).toEqual([]);
  } finally {
    AppSession.prototype.rotate = handshake;
    store.outgoingUpdate = update;
  }
}, 30_000);
