// A QoS 1 PUBLISH is acknowledged only once the broker's store holds it: the store is stalled on purpose, and no
// PUBACK may come while it is; PUBACKs keep the order of their PUBLISHes [MQTT-4.6.0-2]; a store that fails sends none.
import mqttPacket, { type IPublishPacket } from 'mqtt-packet';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SqlitePersistence } from '../../broker/persistence/index.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

/** How long a PUBACK sent too early (before the store) is given to arrive. */
const EARLY_ACK_MS = 300;

const dataDir = tempDir('qkey-ack-after-store-');
let sys: TestSystem;
const open: RawMqtt[] = [];
beforeAll(async () => {
  sys = await startTestSystem({ persistence: 'sqlite', dataDir });
});
afterAll(async () => {
  for (const raw of open) raw.socket.destroy();
  await sys.stop();
  removeDir(dataDir);
});

type StoreMethod = 'outgoingEnqueueCombi' | 'storeRetained';
type Store = Record<StoreMethod, (...args: unknown[]) => Promise<unknown>>;

/**
 * Stalls the broker store's `method` (on the class: the broker reaches its store through the queue bound's wrapper):
 * each call waits until the test lets it go (or fails it), then runs the real one; `log` records when each call's
 * real write is durable (its promise resolved).
 */
function stall(method: StoreMethod, log: string[]) {
  const store = SqlitePersistence.prototype as unknown as Store;
  const real = store[method];
  const calls: Array<{ go(fail?: Error): void }> = [];
  const waiters: Array<() => void> = [];
  store[method] = async function stalled(this: Store, ...args: unknown[]) {
    let go!: (fail?: Error) => void;
    const released = new Promise<Error | undefined>((r) => (go = r));
    calls.push({ go });
    waiters.splice(0).forEach((w) => w());
    const fail = await released;
    if (fail) throw fail;
    const result = await real.apply(this, args);
    log.push(`${method} durable`);
    return result;
  };
  return {
    calls,
    /** Resolves once `n` calls are waiting. */
    async reached(n: number) {
      while (calls.length < n) await new Promise<void>((r) => waiters.push(r));
    },
    restore: () => (store[method] = real),
  };
}

async function appToken(appId: string, acl: { publish?: string[]; subscribe?: string[] }): Promise<string> {
  const { client_secret } = await sys.kms.admin.registerApp(appId, acl);
  return (await sys.kms.anon.clientToken(appId, client_secret)).access_token;
}

async function connectRaw(clientId: string, username: string, password: string, clean = true): Promise<RawMqtt> {
  const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, { clientId, username, password, clean, keepalive: 0 });
  expect(returnCode).toBe(0);
  open.push(raw);
  return raw;
}

/** An application with a persistent session on `filter`, then gone: the broker queues what matches for it. */
async function offlineSubscriber(appId: string, filter: string): Promise<() => Promise<RawMqtt>> {
  const token = await appToken(appId, { subscribe: [filter] });
  const connect = () => connectRaw(`${appId}/q`, appId, token, false);
  const raw = await connect();
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 1 }] });
  await raw.next('suback');
  raw.send({ cmd: 'disconnect' });
  await raw.closed;
  return connect;
}

const publish = (topic: string, payload: string, messageId: number, retain = false): IPublishPacket => ({
  cmd: 'publish',
  topic,
  payload: Buffer.from(payload),
  qos: 1,
  messageId,
  retain,
  dup: false,
});

const acks = (raw: RawMqtt) =>
  raw.received.filter((p) => p.cmd === 'puback').map((p) => (p as { messageId: number }).messageId);

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

it("an application's QoS 1 command is acknowledged only once its queued copy and its retained copy are durable", async () => {
  const reconnect = await offlineSubscriber('ack-q-watch', 'devices/+/down/#');
  const log: string[] = [];
  const queued = stall('outgoingEnqueueCombi', log);
  const retained = stall('storeRetained', log);
  try {
    const ops = await connectRaw(
      'ack-q-ops/x',
      'ack-q-ops',
      await appToken('ack-q-ops', { publish: ['devices/+/down/#'] }),
    );
    ops.send(publish('devices/ack-q-dev/down/cfg', 'cfg 1', 11, true));
    await retained.reached(1);
    await pause(EARLY_ACK_MS);
    expect(acks(ops)).toEqual([]);
    retained.calls[0]!.go();
    await queued.reached(1);
    await pause(EARLY_ACK_MS);
    expect(acks(ops)).toEqual([]);
    queued.calls[0]!.go();
    await ops.next('puback');
    // By the time the PUBACK is on the wire, both writes were committed and synced.
    expect(log).toEqual(['storeRetained durable', 'outgoingEnqueueCombi durable']);
  } finally {
    queued.restore();
    retained.restore();
  }
  const watch = await reconnect();
  const got = (await watch.next('publish')) as { topic: string; payload: Buffer };
  expect([got.topic, got.payload.toString()]).toEqual(['devices/ack-q-dev/down/cfg', 'cfg 1']);
});

it("a device's QoS 1 uplink is acknowledged only once the copy queued for an application is durable", async () => {
  const chip = await sys.device('ack-dev');
  const reconnect = await offlineSubscriber('ack-dev-watch', 'devices/+/up/#');
  const log: string[] = [];
  const queued = stall('outgoingEnqueueCombi', log);
  try {
    chip.beginSession();
    const dev = await connectRaw('ack-dev', 'ack-dev', await sys.deviceToken(chip));
    const topic = 'devices/ack-dev/up/t';
    dev.send({ ...publish(topic, '', 21), payload: Buffer.from(chip.sealUplink(Buffer.from('reading 7'), topic)) });
    await queued.reached(1);
    await pause(EARLY_ACK_MS);
    expect(acks(dev)).toEqual([]);
    queued.calls[0]!.go();
    await dev.next('puback');
    expect(log).toEqual(['outgoingEnqueueCombi durable']);
  } finally {
    queued.restore();
  }
  const watch = await reconnect();
  const got = (await watch.next('publish')) as { payload: Buffer };
  expect(got.payload.toString()).toBe('reading 7'); // the application's copy is the plaintext
});

it('PUBACKs keep the order of the PUBLISHes: one whose store completes first waits for the earlier one [MQTT-4.6.0-2]', async () => {
  await offlineSubscriber('ack-o-watch', 'devices/+/down/#');
  const log: string[] = [];
  const queued = stall('outgoingEnqueueCombi', log);
  try {
    const ops = await connectRaw(
      'ack-o-ops/x',
      'ack-o-ops',
      await appToken('ack-o-ops', { publish: ['devices/+/down/#'] }),
    );
    // Three PUBLISHes in one write: Aedes handles them at once.
    ops.write(
      Buffer.concat(
        [31, 32, 33].map((id) => mqttPacket.generate(publish(`devices/ack-o-${id}/down/cmd`, `c${id}`, id))),
      ),
    );
    await queued.reached(3);
    // The later two are stored first; neither may be acknowledged before the first.
    queued.calls[2]!.go();
    queued.calls[1]!.go();
    await pause(EARLY_ACK_MS);
    expect(log).toEqual(['outgoingEnqueueCombi durable', 'outgoingEnqueueCombi durable']);
    expect(acks(ops)).toEqual([]);
    queued.calls[0]!.go();
    const order: number[] = [];
    for (let i = 0; i < 3; i++) order.push(((await ops.next('puback')) as { messageId: number }).messageId);
    expect(order).toEqual([31, 32, 33]);
  } finally {
    queued.restore();
  }
});

it('a store that fails sends no PUBACK: the connection is closed and the message reaches no one', async () => {
  // (Not devices/+/down/#: the first test left a retained message there.)
  const filter = 'devices/ack-f-dev/down/#';
  await offlineSubscriber('ack-f-watch', filter);
  const live = await connectRaw('ack-f-live/x', 'ack-f-live', await appToken('ack-f-live', { subscribe: [filter] }));
  live.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 1 }] });
  await live.next('suback');
  const log: string[] = [];
  const queued = stall('outgoingEnqueueCombi', log);
  try {
    const ops = await connectRaw('ack-f-ops/x', 'ack-f-ops', await appToken('ack-f-ops', { publish: [filter] }));
    ops.send(publish('devices/ack-f-dev/down/cmd', 'lost', 41));
    await queued.reached(1);
    queued.calls[0]!.go(new Error('disk full'));
    await ops.closedWithin();
    expect(acks(ops)).toEqual([]);
  } finally {
    queued.restore();
  }
  live.send({ cmd: 'pingreq' });
  await live.next('pingresp');
  expect(live.received.filter((p) => p.cmd === 'publish')).toEqual([]);
});
