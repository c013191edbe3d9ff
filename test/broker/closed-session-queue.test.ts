// A connection that ends while Aedes is still sending its session's stored queue (broker/closed-session-queue.ts):
// Aedes reads on after the close, and what it read must stay queued for the next connection, not be cleared; under
// the queue bound (broker/queue-bound.ts), a clear the guard skips says nothing was removed, so the bound goes on
// counting what the store holds, and maxQueuedMessages still holds after a cut connection.
import { Readable } from 'node:stream';
import type { MqttClient } from 'mqtt';
import type { IPublishPacket } from 'mqtt-packet';
import { createRequire } from 'node:module';
import { QueueBound } from '../../broker/queue-bound.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keepQueuesOfClosedClients } from '../../broker/closed-session-queue.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import type { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const MemoryPersistence = createRequire(import.meta.url)('aedes-persistence/asyncPersistence.js') as new () => object;

describe('keepQueuesOfClosedClients', () => {
  it("leaves a closed client's queue untouched and passes an open client's calls on", async () => {
    const calls: string[] = [];
    const store = {
      outgoingStream: () => Readable.from([]),
      outgoingUpdate: (c: object, _p: object) => (calls.push(`update ${(c as { id: string }).id}`), Promise.resolve()),
      outgoingClearMessageId: (c: object, _p: object) => (
        calls.push(`clear ${(c as { id: string }).id}`),
        Promise.resolve()
      ),
    };
    keepQueuesOfClosedClients(store);
    keepQueuesOfClosedClients(store); // wrapped once
    await store.outgoingUpdate({ id: 'open', closed: false } as never, {});
    await store.outgoingClearMessageId({ id: 'open', closed: false } as never, {});
    await store.outgoingUpdate({ id: 'gone', closed: true } as never, {});
    await store.outgoingClearMessageId({ id: 'gone', closed: true } as never, {});
    expect(calls).toEqual(['update open', 'clear open']);
  });
});

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

describe.each(['memory', 'sqlite'] as const)('a device cut off while its queue is sent, %s store', (persistence) => {
  let sys: TestSystem;
  let app: MqttClient;
  const data = tempDir('qkey-cut-queue-');
  beforeAll(async () => {
    sys = await startTestSystem({ persistence, dataDir: data });
    app = await sys.connectApp('app-cut-queue');
  });
  afterAll(async () => {
    await app.endAsync(true);
    await sys.stop();
    removeDir(data);
  });

  async function connect(chip: SecurityChip): Promise<RawMqtt> {
    const { raw, returnCode } = await sys.rawDevice(chip, { clean: false });
    expect(returnCode).toBe(0);
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `devices/${chip.deviceId}/down/#`, qos: 1 }] });
    await raw.next('suback');
    return raw;
  }

  /** The next command on `raw`, opened, and acknowledged. */
  async function take(chip: SecurityChip, raw: RawMqtt): Promise<string> {
    const p = (await raw.next('publish')) as IPublishPacket & { payload: Buffer };
    raw.send({ cmd: 'puback', messageId: p.messageId! });
    return Buffer.from(chip.openDownlink(p.payload, p.topic)).toString();
  }

  it('every command arrives on this connection or the next; none is cleared unsent', async () => {
    const chip = await sys.device(`dev-cut-${persistence}`, 4, 16);
    const topic = `devices/${chip.deviceId}/down/cmd`;
    const away = await connect(chip);
    away.send({ cmd: 'disconnect' });
    await away.closed;
    const commands = Array.from({ length: 60 }, (_, i) => `cmd ${i}`);
    for (const c of commands) await app.publishAsync(topic, c, { qos: 1 });

    const cut = await connect(chip);
    const seen = new Set<string>();
    for (let i = 0; i < 5; i++) seen.add(await take(chip, cut));
    cut.reset(); // gone with most of the queue still being sent by Aedes
    await cut.closed;

    const next = await connect(chip);
    while (seen.size < commands.length) seen.add(await take(chip, next));
    expect([...seen].sort()).toEqual([...commands].sort());
    next.send({ cmd: 'pingreq' });
    await next.next('pingresp');
    next.destroy();
  });

  async function stored(clientId: string): Promise<number> {
    const store = (sys.broker.aedes as unknown as { persistence: { outgoingStream(c: object): Readable } }).persistence;
    let n = 0;
    for await (const _ of store.outgoingStream({ id: clientId, clean: false })) n++;
    return n;
  }

  it('counts what the store still holds for a device cut off while its queue was being sent', async () => {
    const chip = await sys.device(`dev-cut-bound-${persistence}`, 4, 16);
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
