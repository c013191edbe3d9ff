// A connection that ends while Aedes is still sending its session's stored queue (broker/closed-session-queue.ts):
// Aedes reads on after the close, and what it read must stay queued for the next connection, not be cleared.
import { Readable } from 'node:stream';
import type { MqttClient } from 'mqtt';
import type { IPublishPacket } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keepQueuesOfClosedClients } from '../../broker/closed-session-queue.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import type { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

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
});
