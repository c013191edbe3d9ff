// What a client sees when a message comes again (docs/PROTOCOL.md §19), on the wire, in the in-memory and the SQLite
// store: a QoS 1 or 2 message left unacknowledged comes back after a reconnect with the same packet identifier
// [MQTT-4.4.0-1] and DUP 1 [MQTT-3.3.1-1], to a device in a different envelope; one queued while the client was away
// comes once, DUP 0; a QoS 2 command already PUBREC'd comes back as PUBREL only. Mosquitto, the reference, agrees.
import { Readable } from 'node:stream';
import mqtt, { type MqttClient } from 'mqtt';
import type { IPublishPacket } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asRedelivery, markRedeliveries } from '../../broker/redelivery.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { parseEnvelope } from '../../protocol/index.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

type Delivery = IPublishPacket & { payload: Buffer };
const publish = async (raw: RawMqtt) => (await raw.next('publish')) as Delivery;
type Store = { outgoingStream(client: { clean?: boolean }): Readable };

describe('asRedelivery and markRedeliveries', () => {
  it('mark a stored PUBLISH that has a packet identifier, and nothing else', async () => {
    expect(asRedelivery({ cmd: 'publish', messageId: 7, dup: false }).dup).toBe(true);
    expect(asRedelivery({ cmd: 'publish', dup: false }).dup).toBe(false);
    expect(asRedelivery<{ cmd: string; messageId: number; dup?: boolean }>({ cmd: 'pubrel', messageId: 7 }).dup).toBe(
      undefined,
    );
    const rows = () => [
      { cmd: 'publish', topic: 'a', messageId: 3, dup: false },
      { cmd: 'publish', topic: 'b', dup: false },
      { cmd: 'pubrel', messageId: 4 },
    ];
    const store: Store = { outgoingStream: () => Readable.from(rows()) };
    markRedeliveries(store);
    markRedeliveries(store); // wrapped once only
    const read = async (clean: boolean) => {
      const out: Array<{ dup?: boolean }> = [];
      for await (const p of store.outgoingStream({ clean })) out.push(p as { dup?: boolean });
      return out.map((p) => p.dup);
    };
    expect(await read(false)).toEqual([true, false, undefined]);
    expect(await read(true)).toEqual([false, false, undefined]); // a clean session's queue is read as it is
  });

  it('a reader that stops early releases the store’s stream', async () => {
    const source = Readable.from([{ cmd: 'publish', messageId: 1 }, { cmd: 'publish' }]);
    const store: Store = { outgoingStream: () => source };
    markRedeliveries(store);
    for await (const _ of store.outgoingStream({ clean: false })) break;
    await new Promise((r) => setImmediate(r));
    expect(source.destroyed).toBe(true);
  });
});

describe.each(['memory', 'sqlite'] as const)('QKey broker, %s store', (persistence) => {
  let sys: TestSystem;
  let app: MqttClient;
  const data = tempDir('qkey-redelivery-');
  beforeAll(async () => {
    sys = await startTestSystem({ persistence, dataDir: data });
    app = await sys.connectApp('app-redelivery');
  });
  afterAll(async () => {
    await sys.stop();
    removeDir(data);
  });

  /** A device connection with a persistent session (clean session 0), its downlink space subscribed at `qos`. */
  async function connect(chip: SecurityChip, qos: 1 | 2): Promise<RawMqtt> {
    const { raw, returnCode } = await sys.rawDevice(chip, { clean: false });
    expect(returnCode).toBe(0);
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `devices/${chip.deviceId}/down/#`, qos }] });
    await raw.next('suback');
    return raw;
  }

  const plaintext = (chip: SecurityChip, p: Delivery) => Buffer.from(chip.openDownlink(p.payload, p.topic)).toString();

  describe.each([1, 2] as const)('QoS %i', (qos) => {
    it('an unacknowledged command comes again: same packet identifier, DUP 1, a new envelope', async () => {
      const chip = await sys.device(`dev-redeliver-${qos}`);
      const topic = `devices/${chip.deviceId}/down/cmd`;
      const first = await connect(chip, qos);
      await app.publishAsync(topic, 'open valve', { qos });
      const sent = await publish(first);
      expect(sent.dup).toBe(false);
      expect(plaintext(chip, sent)).toBe('open valve');
      first.reset(); // gone before PUBACK (QoS 1) or PUBREC (QoS 2)
      await first.closed;

      const second = await connect(chip, qos);
      const again = await publish(second);
      expect(again.messageId).toBe(sent.messageId);
      expect(again.dup).toBe(true); // [MQTT-3.3.1-1]

      expect(again.payload.equals(sent.payload)).toBe(false);
      expect(parseEnvelope(again.payload).keyIndex).not.toBe(parseEnvelope(sent.payload).keyIndex);
      expect(plaintext(chip, again)).toBe('open valve');
      second.reset(); // and once more: still DUP 1, still the same identifier, acknowledged this time
      await second.closed;
      const third = await connect(chip, qos);
      const last = await publish(third);
      expect([last.messageId, last.dup, plaintext(chip, last)]).toEqual([sent.messageId, true, 'open valve']);
      if (qos === 1) third.send({ cmd: 'puback', messageId: last.messageId! });
      else {
        third.send({ cmd: 'pubrec', messageId: last.messageId! });
        await third.next('pubrel');
        third.send({ cmd: 'pubcomp', messageId: last.messageId! });
      }
      third.send({ cmd: 'pingreq' });
      await third.next('pingresp');
      third.destroy();
      const fourth = await connect(chip, qos);
      fourth.send({ cmd: 'pingreq' });
      await fourth.next('pingresp');
      expect(fourth.received.filter((p) => p.cmd === 'publish')).toEqual([]);
      fourth.destroy();
    });
  });

  it('a command queued while the device was away comes once, DUP 0', async () => {
    const chip = await sys.device('dev-queued-dup');
    const topic = `devices/${chip.deviceId}/down/cmd`;
    const first = await connect(chip, 1);
    first.send({ cmd: 'disconnect' });
    await first.closed;
    await app.publishAsync(topic, 'while away', { qos: 1 });
    const second = await connect(chip, 1);
    const got = await publish(second);
    expect(got.dup).toBe(false);
    expect(plaintext(chip, got)).toBe('while away');
    second.send({ cmd: 'puback', messageId: got.messageId! });
    second.send({ cmd: 'pingreq' });
    await second.next('pingresp');
    expect(second.received.filter((p) => p.cmd === 'publish')).toEqual([]);
    second.destroy();
  });

  it('QoS 2, PUBREC sent but PUBREL not seen: the broker sends PUBREL again, never the PUBLISH', async () => {
    const chip = await sys.device('dev-pubrel');
    const topic = `devices/${chip.deviceId}/down/cmd`;
    const first = await connect(chip, 2);
    await app.publishAsync(topic, 'exactly once', { qos: 2 });
    const sent = await publish(first);
    first.send({ cmd: 'pubrec', messageId: sent.messageId! });
    await first.next('pubrel');
    first.reset(); // the PUBCOMP never left the device
    await first.closed;

    const second = await connect(chip, 2);
    const pubrel = await second.next('pubrel');
    expect((pubrel as { messageId: number }).messageId).toBe(sent.messageId);
    second.send({ cmd: 'pubcomp', messageId: sent.messageId! });
    second.send({ cmd: 'pingreq' });
    await second.next('pingresp');
    expect(second.received.filter((p) => p.cmd === 'publish')).toEqual([]);
    second.destroy();
  });

  it('an application’s telemetry at QoS 1: DUP 0 when first sent, DUP 1 when sent again after a reconnect', async () => {
    const appId = 'app-redelivery-sub';
    const { client_secret: secret } = await sys.kms.admin.registerApp(appId);
    const connectApp = async () => {
      const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
        clientId: `${appId}/raw`,
        username: appId,
        password: (await sys.kms.anon.clientToken(appId, secret)).access_token,
        clean: false,
      });
      expect(returnCode).toBe(0);
      raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/+/up/#', qos: 1 }] });
      await raw.next('suback');
      return raw;
    };
    const chip = await sys.device('dev-redelivery-pub');
    const device = await sys.connectDevice(chip);
    const topic = `devices/${chip.deviceId}/up/t`;
    const first = await connectApp();
    await device.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from('reading'), topic)), { qos: 1 });
    const sent = await publish(first);
    expect([sent.payload.toString(), sent.dup]).toEqual(['reading', false]);
    first.reset();
    await first.closed;
    const second = await connectApp();
    const again = await publish(second);
    expect([again.payload.toString(), again.dup, again.messageId]).toEqual(['reading', true, sent.messageId]);
    second.send({ cmd: 'puback', messageId: again.messageId! });
    second.destroy();
    await device.endAsync();
  });
});

describe('Mosquitto, the reference', () => {
  it.each([1, 2] as const)('QoS %i: DUP 0 when first sent (queued or live), DUP 1 when sent again', async (qos) => {
    const mosquitto = await startMosquitto();
    try {
      const connect = async () => {
        const { raw } = await RawMqtt.connect(mosquitto.url, { clientId: 'dev', clean: false });
        raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/dev/down/#', qos }] });
        await raw.next('suback');
        return raw;
      };
      const away = async (raw: RawMqtt) => {
        raw.reset();
        await raw.closed;
        await new Promise((r) => setTimeout(r, 200)); // Mosquitto notices the lost connection
      };
      await away(await connect());
      const app = await mqtt.connectAsync(mosquitto.url, { reconnectPeriod: 0 });
      await app.publishAsync('devices/dev/down/cmd', 'while away', { qos });
      const first = await connect();
      const queued = await publish(first);
      await app.publishAsync('devices/dev/down/cmd', 'live', { qos });
      const live = await publish(first);
      expect([queued, live].map((p) => [p.payload.toString(), p.dup])).toEqual([
        ['while away', false],
        ['live', false],
      ]);
      await away(first);
      const second = await connect();
      const again = [await publish(second), await publish(second)];
      expect(again.map((p) => [p.payload.toString(), p.dup, p.messageId])).toEqual([
        ['while away', true, queued.messageId],
        ['live', true, live.messageId],
      ]);
      second.destroy();
      await app.endAsync();
    } finally {
      await mosquitto.stop();
    }
  });
});
