// The flood attack on a persistent session: an application publishes 10x the queue bound into an offline device's
// downlink topic at QoS 1 and 2. The broker keeps the first <bound> messages, drops the rest (counted, one warning),
// holds only that much memory, keeps the publisher connected and serves other devices; Mosquitto with
// max_queued_messages keeps the same messages.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import mqtt from 'mqtt';
import type { Packet } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

const BOUND = 100;
const FLOOD = 10 * BOUND;
const PAYLOAD = 64 * 1024;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Live memory of this process after a full collection: the heap and the Buffers outside it. */
function retained(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Message i: its number in the first four bytes, padded to `size`. */
function message(i: number, size = PAYLOAD): Buffer {
  const b = Buffer.alloc(size, 0x2e);
  b.writeUInt32BE(i, 0);
  return b;
}

async function until(ok: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
/** What each broker delivered after the flood, by QoS: compared at the end. */
const delivered: Record<string, number[]> = {};

interface Received {
  /** The numbers of the first messages, in the order they arrived. */
  numbers: number[];
  /** The number of the next message. */
  next(): Promise<number>;
  end(): Promise<void>;
}

/** The device reconnects to its persistent session with mqtt.js and opens the first `n` messages. */
async function receiveQoS1(chip: SecurityChip, n: number): Promise<Received> {
  const numbers: number[] = [];
  const device = await sys.connectDevice(chip, { clean: false }, (c) =>
    c.on('message', (t, p) => numbers.push(Buffer.from(chip.openDownlink(p, t)).readUInt32BE(0))),
  );
  await until(() => numbers.length >= n);
  return {
    numbers: numbers.slice(0, n),
    next: async () => (await until(() => numbers.length > n), numbers[n]!),
    end: () => device.endAsync(),
  };
}

/**
 * The same at QoS 2, one handshake at a time (PUBREC, PUBREL, PUBCOMP, then the next): with two QoS 2 messages
 * between PUBREC and PUBCOMP, Aedes' in-memory persistence rewrites the first PUBREL's packet identifier (an
 * upstream defect outside the bound), and a client such as mqtt.js, which answers each PUBLISH at once, loses one.
 */
async function receiveQoS2(chip: SecurityChip, n: number): Promise<Received> {
  chip.beginSession();
  const password = await sys.deviceToken(chip);
  const { raw } = await RawMqtt.connect(sys.mqttUrl, {
    clientId: chip.deviceId,
    username: chip.deviceId,
    password,
    clean: false,
  });
  const next = async () => {
    const p = (await raw.next('publish', 20_000)) as { topic: string; payload: Buffer; messageId: number };
    raw.send({ cmd: 'pubrec', messageId: p.messageId } as Packet);
    expect(((await raw.next('pubrel')) as { messageId: number }).messageId).toBe(p.messageId);
    raw.send({ cmd: 'pubcomp', messageId: p.messageId } as Packet);
    return Buffer.from(chip.openDownlink(p.payload, p.topic)).readUInt32BE(0);
  };
  const numbers: number[] = [];
  while (numbers.length < n) numbers.push(await next());
  return { numbers, next, end: async () => raw.destroy() };
}

let sys: TestSystem;
beforeAll(async () => {
  sys = await startTestSystem({ maxQueuedMessages: BOUND });
});
afterAll(async () => {
  await sys.stop();
});

describe('an application floods an offline device’s persistent session with 10x the bound', () => {
  for (const qos of [1, 2] as const) {
    it(`at QoS ${qos}: the first ${BOUND} are kept and delivered in order, the rest dropped; memory stays bounded`, async () => {
      const id = `dev-flood-${qos}`;
      const chip = await sys.device(id, 8, 16);
      const topic = `devices/${id}/down/cmd`;
      const first = await sys.connectDevice(chip, { clean: false });
      await first.subscribeAsync(`devices/${id}/down/#`, { qos });
      await first.endAsync();
      const clients = (sys.broker.aedes as unknown as { clients: Record<string, unknown> }).clients;
      await until(() => clients[id] === undefined);
      const queues = sys.broker.plugin.queues;
      const dropped = queues.dropped.messages;
      const before = retained();

      const app = await sys.connectApp(`app-flood-${qos}`);
      await Promise.all(range(FLOOD).map((i) => app.publishAsync(topic, message(i), { qos })));
      await until(() => queues.dropped.messages === dropped + FLOOD - BOUND);
      expect(app.connected).toBe(true); // the publisher is not disconnected
      expect(queues.queued(id)).toEqual({ messages: BOUND, bytes: BOUND * PAYLOAD });
      // The flood was 64 MiB; what the broker holds is the bound's 6.4 MiB (and what any test process keeps).
      const growth = retained() - before;
      expect(growth).toBeLessThan(2 * BOUND * PAYLOAD);
      const metrics = await sys.broker.registry.metrics();
      expect(metrics).toMatch(
        new RegExp(`^broker_queue_dropped_total\\{reason="messages"\\} ${dropped + FLOOD - BOUND}$`, 'm'),
      );
      const warnings = sys
        .logs()
        .split('\n')
        .filter((l) => l.includes('queue full') && l.includes(`"client":"${id}"`));
      expect(warnings).toHaveLength(1);
      expect(JSON.parse(warnings[0]!)).toMatchObject({ level: 40, reason: 'messages', maxQueuedMessages: BOUND });

      // The device comes back: the first BOUND messages arrive in order, then a command published now.
      const got = qos === 1 ? await receiveQoS1(chip, BOUND) : await receiveQoS2(chip, BOUND);
      expect(got.numbers).toEqual(range(BOUND));
      await app.publishAsync(topic, message(FLOOD, 8), { qos });
      expect(await got.next()).toBe(FLOOD);
      await got.end();
      delivered[`qkey-${qos}`] = got.numbers;

      // Another device is served as usual.
      const other = await sys.device(`dev-other-${qos}`);
      const dev = await sys.connectDevice(other);
      await dev.subscribeAsync(`devices/${other.deviceId}/down/#`, { qos: 1 });
      const command = nextMessage(dev);
      await app.publishAsync(`devices/${other.deviceId}/down/cmd`, 'ping', { qos: 1 });
      const m = await command;
      expect(Buffer.from(other.openDownlink(m.payload, m.topic)).toString()).toBe('ping');
      await dev.endAsync();
      await app.endAsync();
    }, 120_000);
  }
});

describe('Mosquitto with max_queued_messages, the reference', () => {
  for (const qos of [1, 2] as const) {
    it(`at QoS ${qos}: keeps the same messages`, async () => {
      // No in-flight window: the queue bound alone decides what is kept, as in QKey, where messages in flight count
      // within the bound. (With its default window of 20, Mosquitto 2.0.11 also delivers only the first 20 of a
      // QoS 2 queue after a reconnect and holds the rest.)
      const mosquitto = await startMosquitto([`max_queued_messages ${BOUND}`, 'max_inflight_messages 0']);
      try {
        const opts = () => ({ reconnectPeriod: 0, clean: false, clientId: 'dev' });
        const first = await mqtt.connectAsync(mosquitto.url, opts());
        await first.subscribeAsync('devices/dev/down/#', { qos });
        await first.endAsync();
        const app = await mqtt.connectAsync(mosquitto.url, { reconnectPeriod: 0, clientId: 'app' });
        await Promise.all(range(FLOOD).map((i) => app.publishAsync('devices/dev/down/cmd', message(i, 1024), { qos })));
        const got: number[] = [];
        const back = mqtt.connect(mosquitto.url, opts());
        back.on('message', (_t, p) => got.push(p.readUInt32BE(0)));
        await until(() => got.length >= BOUND);
        await app.publishAsync('devices/dev/down/cmd', message(FLOOD, 8), { qos });
        await until(() => got.length > BOUND);
        expect(got).toEqual([...range(BOUND), FLOOD]);
        if (delivered[`qkey-${qos}`]) expect(delivered[`qkey-${qos}`]).toEqual(got.slice(0, BOUND));
        await back.endAsync();
        await app.endAsync();
      } finally {
        await mosquitto.stop();
      }
    }, 60_000);
  }
});
