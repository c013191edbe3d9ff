// QoS 1 retransmissions and replays of device envelopes [MQTT-4.3.2-1], docs/PROTOCOL.md §9.1: a DUP resend of an
// envelope already accepted is acknowledged and passed on to no one (the connection stays up), on the same connection
// or a reconnect that continues the held key; the same envelope without DUP, or at QoS 0, is a replay and refused.
import type { MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
let app: MqttClient;
beforeAll(async () => {
  sys = await startTestSystem();
  app = await sys.connectApp('app-dup', { subscribe: ['devices/+/up/#'] });
  await app.subscribeAsync('devices/+/up/#', { qos: 1 });
});
afterAll(async () => {
  await sys.stop();
});

async function rawDevice(deviceId: string) {
  const chip = await sys.device(deviceId);
  chip.beginSession();
  const password = await sys.deviceToken(chip);
  const connect = () => RawMqtt.connect(sys.mqttUrl, { clientId: deviceId, username: deviceId, password });
  return { chip, connect };
}

function publish(
  raw: RawMqtt,
  topic: string,
  payload: Buffer,
  options: { messageId?: number; dup?: boolean; qos?: 0 | 1 | 2 },
) {
  raw.send({
    cmd: 'publish',
    topic,
    payload,
    qos: options.qos ?? 1,
    dup: options.dup ?? false,
    retain: false,
    ...(options.messageId !== undefined && { messageId: options.messageId }),
  });
}

/** Messages the application receives on `topic` within `ms`. */
async function arrivals(topic: string, ms: number, during: () => Promise<void>): Promise<string[]> {
  const got: string[] = [];
  const onMessage = (t: string, p: Buffer) => t === topic && got.push(p.toString());
  app.on('message', onMessage);
  await during();
  await new Promise((r) => setTimeout(r, ms));
  app.off('message', onMessage);
  return got;
}

it('a DUP resend of an accepted envelope is acknowledged, delivered to no one, and the connection stays up', async () => {
  const { chip, connect } = await rawDevice('dev-dup');
  const topic = 'devices/dev-dup/up/t';
  const envelope = Buffer.from(chip.sealUplink(Buffer.from('once'), topic));
  const { raw } = await connect();
  const got = await arrivals(topic, 500, async () => {
    publish(raw, topic, envelope, { messageId: 1 });
    await raw.next('puback');
    publish(raw, topic, envelope, { messageId: 1, dup: true });
    await raw.next('puback');
  });
  expect(got).toEqual(['once']);
  // Still connected: the next message of the session goes through.
  const next = nextMessage(app, 5000, (t) => t === topic);
  publish(raw, topic, Buffer.from(chip.sealUplink(Buffer.from('twice'), topic)), { messageId: 2 });
  expect((await next).payload.toString()).toBe('twice');
  raw.destroy();
});

it('a reconnect that continues the held key gets the resend acknowledged once, never delivered again', async () => {
  const { chip, connect } = await rawDevice('dev-dup-reconnect');
  const topic = 'devices/dev-dup-reconnect/up/t';
  const envelope = Buffer.from(chip.sealUplink(Buffer.from('lost ack'), topic));
  const first = (await connect()).raw;
  const got = await arrivals(topic, 500, async () => {
    publish(first, topic, envelope, { messageId: 7 });
    await first.next('puback');
    first.destroy();
    const second = (await connect()).raw;
    publish(second, topic, envelope, { messageId: 7, dup: true });
    await second.next('puback');
    second.destroy();
  });
  expect(got).toEqual(['lost ack']);
});

it('the same envelope without DUP, or at QoS 0, is a replay: refused with a status notice, connection closed', async () => {
  const { chip, connect } = await rawDevice('dev-replay');
  const topic = 'devices/dev-replay/up/t';
  const envelope = Buffer.from(chip.sealUplink(Buffer.from('first'), topic));
  for (const options of [{ messageId: 3 }, { qos: 0 as const }]) {
    const { raw } = await connect();
    raw.send({ cmd: 'subscribe', messageId: 9, subscriptions: [{ topic: 'devices/dev-replay/status', qos: 0 }] });
    await raw.next('suback');
    if (options.messageId === 3) {
      publish(raw, topic, envelope, { messageId: 2 });
      await raw.next('puback');
    }
    publish(raw, topic, envelope, options);
    const notice = (await raw.next('publish')) as { topic: string; payload: Buffer };
    expect(notice.topic).toBe('devices/dev-replay/status');
    expect(JSON.parse(notice.payload.toString())).toMatchObject({ reason: 'replay', topic });
    await raw.closedWithin();
  }
});

it('a QoS 2 DUP resend of an accepted envelope gets PUBREC and PUBCOMP and is delivered once', async () => {
  const { chip, connect } = await rawDevice('dev-dup2');
  const topic = 'devices/dev-dup2/up/t';
  const envelope = Buffer.from(chip.sealUplink(Buffer.from('exactly once'), topic));
  const first = (await connect()).raw;
  const got = await arrivals(topic, 500, async () => {
    publish(first, topic, envelope, { messageId: 5, qos: 2 });
    await first.next('pubrec');
    first.destroy(); // PUBREC seen, PUBREL never sent
    const second = (await connect()).raw;
    publish(second, topic, envelope, { messageId: 5, qos: 2, dup: true });
    await second.next('pubrec');
    second.send({ cmd: 'pubrel', messageId: 5 });
    await second.next('pubcomp');
    second.destroy();
  });
  expect(got).toEqual(['exactly once']);
});

it('a QoS 2 DUP pipelined with PUBREL cannot slip an unopened payload past the broker (stolen token, no chip)', async () => {
  const { connect } = await rawDevice('dev-dup-race');
  const topic = 'devices/dev-dup-race/up/t';
  const got = await arrivals(topic, 800, async () => {
    for (let round = 0; round < 10; round++) {
      const { raw, returnCode } = await connect();
      expect(returnCode).toBe(0);
      const id = 100 + round;
      // An empty payload passes unsealed (the retained-delete marker) and is stored awaiting PUBREL ...
      publish(raw, topic, Buffer.alloc(0), { messageId: id, qos: 2 });
      await raw.next('pubrec');
      // ... then, in one write, a DUP with the same identifier and a forged payload, and the PUBREL.
      raw.write(
        Buffer.concat([
          mqttPacket.generate({
            cmd: 'publish',
            topic,
            payload: Buffer.from('{"forged":1}'),
            qos: 2,
            dup: true,
            retain: true,
            messageId: id,
          }),
          mqttPacket.generate({ cmd: 'pubrel', messageId: id }),
        ]),
      );
      // Refused (the forged payload does not open) or not: wait a moment either way, then move on.
      await Promise.race([raw.closed, new Promise((r) => setTimeout(r, 1000))]);
      raw.destroy();
    }
  });
  expect(got.filter((p) => p.includes('forged'))).toEqual([]);
});
