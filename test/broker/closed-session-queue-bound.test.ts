// broker/closed-session-queue.ts under the queue bound (broker/queue-bound.ts): a closed client's clear leaves the
// entry stored and says nothing was removed, and the guard sits over the bound, so the bound goes on counting what
// the store holds after a connection is cut while its queue is sent: maxQueuedMessages and maxQueuedBytes still hold.
import type { MqttClient } from 'mqtt';
import type { IPublishPacket } from 'mqtt-packet';
import { createRequire } from 'node:module';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keepQueuesOfClosedClients } from '../../broker/closed-session-queue.js';
import { QueueBound } from '../../broker/queue-bound.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import type { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const MemoryPersistence = createRequire(import.meta.url)('aedes-persistence/asyncPersistence.js') as new () => object;

describe('keepQueuesOfClosedClients under QueueBound', () => {
  it("a closed client's clear that removed nothing is not counted as a removal", async () => {
    const inner = new MemoryPersistence() as unknown as {
      outgoingEnqueue(sub: { clientId: string }, p: object): Promise<void>;
      outgoingUpdate(c: object, p: object): Promise<unknown>;
      outgoingClearMessageId(c: object, p: object): Promise<unknown>;
      outgoingStream(c: object): Readable;
    };
    const bound = new QueueBound({ maxMessages: 3, maxBytes: 0 });
    const store = bound.wrap(inner);
    keepQueuesOfClosedClients(store); // as the plugin does: the bound first, the guard over it
    const packet = (n: number) => ({
      cmd: 'publish',
      topic: 't',
      payload: Buffer.from(`m${n}`),
      qos: 1,
      retain: false,
      dup: false,
      brokerId: 'b',
      brokerCounter: n,
    });
    for (let n = 1; n <= 3; n++) await store.outgoingEnqueue({ clientId: 'c' }, packet(n));
    expect(bound.queued('c').messages).toBe(3);
    // Aedes' emptyQueue after the connection closed: an identifier, then the forward hook refuses, then the clear.
    const closed = { id: 'c', clean: false, closed: true };
    for (let n = 1; n <= 3; n++) {
      const p = { ...packet(n), messageId: 100 + n };
      await store.outgoingUpdate(closed, p);
      await store.outgoingClearMessageId(closed, p);
    }
    let held = 0;
    for await (const _ of inner.outgoingStream({ id: 'c' })) held++;
    expect(held).toBe(3); // the guard kept them all
    expect(bound.queued('c').messages).toBe(3); // and counted
    // So the bound admits none of three more for a queue that already holds its maximum.
    for (let n = 4; n <= 6; n++) await store.outgoingEnqueue({ clientId: 'c' }, packet(n));
    held = 0;
    for await (const _ of inner.outgoingStream({ id: 'c' })) held++;
    expect(held).toBeLessThanOrEqual(3);
  });
});

describe.each(['memory', 'sqlite'] as const)('the queue bound after a cut connection, %s store', (persistence) => {
  let sys: TestSystem;
  let app: MqttClient;
  const data = tempDir('qkey-rev2-bound-');
  beforeAll(async () => {
    sys = await startTestSystem({ persistence, dataDir: data });
    app = await sys.connectApp('app-rev2-bound');
  });
  afterAll(async () => {
    await app.endAsync(true);
    await sys.stop();
    removeDir(data);
  });

  async function connect(chip: SecurityChip): Promise<RawMqtt> {
    const { raw, returnCode } = await sys.rawDevice(chip, { clean: false });
    expect(returnCode).toBe(0);
    raw.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: [{ topic: `devices/${chip.deviceId}/down/#`, qos: 1 }],
    });
    await raw.next('suback');
    return raw;
  }

  async function stored(clientId: string): Promise<number> {
    const store = (sys.broker.aedes as unknown as { persistence: { outgoingStream(c: object): Readable } }).persistence;
    let n = 0;
    for await (const _ of store.outgoingStream({ id: clientId, clean: false })) n++;
    return n;
  }

  it('counts what the store still holds for a device cut off while its queue was being sent', async () => {
    const chip = await sys.device(`dev-rev2-bound-${persistence}`, 4, 16);
    const topic = `devices/${chip.deviceId}/down/cmd`;
    const away = await connect(chip);
    away.send({ cmd: 'disconnect' });
    await away.closed;
    const n = 600;
    await Promise.all(Array.from({ length: n }, (_, i) => app.publishAsync(topic, `cmd ${i}`, { qos: 1 })));
    expect(sys.broker.plugin.queues.queued(chip.deviceId).messages).toBe(n);

    const cut = await connect(chip);
    for (let i = 0; i < 5; i++) {
      const p = (await cut.next('publish')) as IPublishPacket;
      cut.send({ cmd: 'puback', messageId: p.messageId! });
    }
    cut.reset(); // gone with most of the queue still being sent by Aedes
    await cut.closed;
    await new Promise((r) => setTimeout(r, 500));

    const inStore = await stored(chip.deviceId);
    expect(inStore).toBeGreaterThanOrEqual(n - 6); // the guard kept them (a PUBACK may have crossed the reset)
    const counted = sys.broker.plugin.queues.queued(chip.deviceId).messages;
    // What that costs: maxQueuedMessages (1000 here) no longer bounds this session's queue.
    await Promise.all(Array.from({ length: 600 }, (_, i) => app.publishAsync(topic, `more ${i}`, { qos: 1 })));
    const after = await stored(chip.deviceId);
    expect.soft(counted, 'what the bound counts').toBe(inStore);
    expect(after, 'stored after 600 more, maxQueuedMessages 1000').toBeLessThanOrEqual(1000);
  });
});
