// Hostile clients: oversized, malformed and hostile packets from applications and devices, online and offline,
// live, retained and queued, at QoS 0, 1 and 2. After each, the broker is alive and serves a legitimate device.
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { DEFAULT_MAX_PAYLOAD } from '../../protocol/index.js';
import { fixedHeader, RawMqtt } from '../helpers/raw-mqtt.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
let watcher: MqttClient;
let legit: SecurityChip;
const TOO_LARGE = DEFAULT_MAX_PAYLOAD + 1; // 262,145 bytes: one more than a device can take
const MAX_SUBSCRIPTIONS = 5;

beforeAll(async () => {
  // expectServes connects the legitimate device and sends it a command after every attack: more downlink claims a
  // minute than the default budget allows a real device (test/broker/claim-budget.test.ts tests that budget).
  sys = await startTestSystem({ maxSubscriptionsPerClient: MAX_SUBSCRIPTIONS, maxDownlinkClaimsPerMinute: 1000 });
  watcher = await sys.connectApp('app-watcher');
  await watcher.subscribeAsync('devices/+/up/#', { qos: 1 });
  legit = await sys.device('dev-legit', 64, 64);
});
afterAll(async () => {
  await sys.stop();
});

async function metric(name: string): Promise<number> {
  const text = await sys.broker.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

/** The broker still serves: a device connects, receives a sealed command and its telemetry reaches an app. */
async function expectServes(): Promise<void> {
  const dev = await sys.connectDevice(legit);
  await dev.subscribeAsync('devices/dev-legit/down/#', { qos: 1 });
  const command = nextMessage(dev);
  await watcherPublish('devices/dev-legit/down/cmd', 'ping');
  const got = await command;
  expect(Buffer.from(legit.openDownlink(got.payload, got.topic)).toString()).toBe('ping');
  const telemetry = nextMessage(watcher, 5000, (t) => t === 'devices/dev-legit/up/t');
  const topic = 'devices/dev-legit/up/t';
  await dev.publishAsync(topic, Buffer.from(legit.sealUplink(Buffer.from('pong'), topic)), { qos: 1 });
  expect((await telemetry).payload.toString()).toBe('pong');
  await dev.endAsync();
}

let sender: MqttClient | undefined;
async function watcherPublish(topic: string, text: string): Promise<void> {
  sender ??= await sys.connectApp('app-sender');
  await sender.publishAsync(topic, text, { qos: 1 });
}

async function appToken(appId: string, acl?: { publish?: string[]; subscribe?: string[] }): Promise<string> {
  const { client_secret } = await sys.kms.admin.registerApp(appId, acl);
  return (await sys.kms.anon.clientToken(appId, client_secret)).access_token;
}

async function rawApp(appId: string, extra: Partial<Parameters<typeof RawMqtt.connect>[1]> = {}): Promise<RawMqtt> {
  const password = await appToken(appId);
  const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
    clientId: `${appId}/raw`,
    username: appId,
    password,
    ...extra,
  });
  expect(returnCode).toBe(0);
  return raw;
}

async function rawDevice(chip: SecurityChip, extra: Partial<Parameters<typeof RawMqtt.connect>[1]> = {}) {
  const { raw, returnCode } = await sys.rawDevice(chip, extra);
  expect(returnCode).toBe(0);
  return raw;
}

describe('an application publishing more than a device can take', () => {
  for (const qos of [0, 1, 2] as const) {
    it(`live at QoS ${qos} to an online device: refused when published, the device gets nothing`, async () => {
      const chip = await sys.device(`dev-online-${qos}`);
      const dev = await sys.connectDevice(chip);
      await dev.subscribeAsync(`devices/${chip.deviceId}/down/#`, { qos: 2 });
      let deliveries = 0;
      dev.on('message', () => deliveries++);
      const before = await metric('broker_publish_rejected_total{reason="too_large"}');
      const app = await rawApp(`app-big-${qos}`);
      app.send({
        cmd: 'publish',
        topic: `devices/${chip.deviceId}/down/cmd`,
        payload: Buffer.alloc(TOO_LARGE, 0x61),
        qos,
        retain: false,
        dup: false,
        ...(qos > 0 && { messageId: 1 }),
      });
      await app.closedWithin();
      expect(await metric('broker_publish_rejected_total{reason="too_large"}')).toBe(before + 1);
      await expectServes();
      expect(deliveries).toBe(0);
      expect(dev.connected).toBe(true);
      await dev.endAsync();
    });
  }

  it('retained: refused, so a device subscribing later gets nothing and the broker lives', async () => {
    const app = await rawApp('app-big-retained');
    app.send({
      cmd: 'publish',
      topic: 'devices/dev-later/down/cfg',
      payload: Buffer.alloc(TOO_LARGE, 0x61),
      qos: 1,
      retain: true,
      dup: false,
      messageId: 7,
    });
    await app.closedWithin();
    const chip = await sys.device('dev-later');
    const dev = await sys.connectDevice(chip);
    let deliveries = 0;
    dev.on('message', () => deliveries++);
    await dev.subscribeAsync('devices/dev-later/down/#', { qos: 1 });
    await expectServes();
    expect(deliveries).toBe(0);
    await dev.endAsync();
  });

  it('queued for an offline device with a persistent session: refused, the session still delivers the rest', async () => {
    const chip = await sys.device('dev-offline');
    const first = await sys.connectDevice(chip, { clean: false });
    await first.subscribeAsync('devices/dev-offline/down/#', { qos: 1 });
    await first.endAsync();
    const app = await rawApp('app-big-queued');
    app.send({
      cmd: 'publish',
      topic: 'devices/dev-offline/down/cmd',
      payload: Buffer.alloc(TOO_LARGE, 0x61),
      qos: 1,
      retain: false,
      dup: false,
      messageId: 9,
    });
    await app.closedWithin();
    await watcherPublish('devices/dev-offline/down/cmd', 'small');
    const got: string[] = [];
    const dev = await sys.connectDevice(chip, { clean: false }, (c) =>
      c.on('message', (t, p) => got.push(Buffer.from(chip.openDownlink(p, t)).toString())),
    );
    await expectServes();
    expect(got).toEqual(['small']);
    await dev.endAsync();
  });
});

describe('a message too large for a device that got past the publish check anyway', () => {
  // Injected with aedes.publish, which no hook sees: what a larger earlier limit or a restored store could leave.
  it('retained: the delivery is dropped and counted, the broker lives', async () => {
    await new Promise<void>((resolve, reject) =>
      sys.broker.aedes.publish(
        {
          cmd: 'publish',
          topic: 'devices/dev-injected/down/cfg',
          payload: Buffer.alloc(TOO_LARGE),
          qos: 1,
          retain: true,
          dup: false,
        },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
    const before = await metric('broker_downlink_total{outcome="dropped_too_large"}');
    const chip = await sys.device('dev-injected');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-injected/down/#', { qos: 1 });
    await expectServes();
    expect(await metric('broker_downlink_total{outcome="dropped_too_large"}')).toBe(before + 1);
    await dev.endAsync();
  });

  it('queued for a persistent session: the delivery is dropped at reconnect, the broker lives', async () => {
    const chip = await sys.device('dev-injected-q');
    const first = await sys.connectDevice(chip, { clean: false });
    await first.subscribeAsync('devices/dev-injected-q/down/#', { qos: 1 });
    await first.endAsync();
    await new Promise<void>((resolve, reject) =>
      sys.broker.aedes.publish(
        {
          cmd: 'publish',
          topic: 'devices/dev-injected-q/down/cmd',
          payload: Buffer.alloc(TOO_LARGE),
          qos: 1,
          retain: false,
          dup: false,
        },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
    const before = await metric('broker_downlink_total{outcome="dropped_too_large"}');
    const dev = await sys.connectDevice(chip, { clean: false });
    await expectServes();
    expect(await metric('broker_downlink_total{outcome="dropped_too_large"}')).toBe(before + 1);
    await dev.endAsync();
  });
});

describe('hostile devices', () => {
  const hostile: Array<[string, (chip: SecurityChip, raw: RawMqtt) => void, string?]> = [
    [
      'an envelope larger than the uplink limit',
      (chip, raw) =>
        raw.write(
          // Header only: version 1, suite 1, key index 0, seq 0, then a payload over the limit (never sealed).
          publishBytes(
            `devices/${chip.deviceId}/up/t`,
            Buffer.concat([Buffer.from([1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(TOO_LARGE + 16)]),
            1,
          ),
        ),
      'too_large',
    ],
    [
      'plaintext telemetry',
      (chip, raw) => raw.write(publishBytes(`devices/${chip.deviceId}/up/t`, Buffer.from('{"t":1}'), 0)),
      'plaintext',
    ],
    [
      'a malformed envelope (unknown version)',
      (chip, raw) => raw.write(publishBytes(`devices/${chip.deviceId}/up/t`, Buffer.alloc(64, 0x07), 2)),
      'malformed',
    ],
    [
      'a forged envelope (right header, wrong tag)',
      (chip, raw) => {
        const topic = `devices/${chip.deviceId}/up/t`;
        const env = Buffer.from(chip.sealUplink(Buffer.from('x'), topic));
        env[env.length - 1]! ^= 1;
        raw.write(publishBytes(topic, env, 1));
      },
      'forged',
    ],
    [
      "a publish into another device's space",
      (_chip, raw) => raw.write(publishBytes('devices/dev-legit/up/t', Buffer.from('x'), 1)),
      'acl',
    ],
    // PUBLISH with QoS 3 is a protocol error [MQTT-3.3.1-4]: fixed header 0x36.
    ['a PUBLISH with QoS 3', (_chip, raw) => raw.write(Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01]))],
    [
      'a second CONNECT [MQTT-3.1.0-2]',
      (chip, raw) =>
        raw.send({
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clean: true,
          keepalive: 30,
          clientId: chip.deviceId,
        }),
    ],
    ['a reserved packet type (0xF0)', (_chip, raw) => raw.write(Buffer.from([0xf0, 0x00]))],
    ['a remaining length of five bytes', (_chip, raw) => raw.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]))],
    [
      'a topic of 200 levels',
      (chip, raw) => raw.write(publishBytes(`devices/${chip.deviceId}/up/${'a/'.repeat(200)}x`, Buffer.from('x'), 0)),
    ],
  ];
  for (const [name, attack, reason] of hostile) {
    it(`${name}: the device is disconnected${reason ? ` (${reason})` : ''}, the broker lives`, async () => {
      const chip = await sys.device(`dev-h-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 40)}`);
      const raw = await rawDevice(chip);
      const before = reason ? await metric(`broker_uplink_total{outcome="${reason}"}`) : 0;
      attack(chip, raw);
      await raw.closedWithin();
      if (reason) expect(await metric(`broker_uplink_total{outcome="${reason}"}`)).toBe(before + 1);
      await expectServes();
    });
  }

  it('subscriptions beyond maxSubscriptionsPerClient get SUBACK 0x80; the connection stays', async () => {
    const chip = await sys.device('dev-subs');
    const raw = await rawDevice(chip);
    const filters = Array.from({ length: MAX_SUBSCRIPTIONS + 3 }, (_, i) => `devices/dev-subs/down/${i}`);
    raw.send({
      cmd: 'subscribe',
      messageId: 3,
      subscriptions: filters.map((topic) => ({ topic, qos: 1 })),
    } as never);
    const suback = (await raw.next('suback')) as { granted: number[] };
    expect(suback.granted.filter((g) => g === 1)).toHaveLength(MAX_SUBSCRIPTIONS);
    expect(suback.granted.filter((g) => g === 0x80)).toHaveLength(3);
    // Unsubscribing frees places.
    raw.send({ cmd: 'unsubscribe', messageId: 4, unsubscriptions: [filters[0]!] } as never);
    await raw.next('unsuback');
    raw.send({
      cmd: 'subscribe',
      messageId: 5,
      subscriptions: [{ topic: 'devices/dev-subs/down/new', qos: 1 }],
    } as never);
    expect(((await raw.next('suback')) as { granted: number[] }).granted).toEqual([1]);
    raw.destroy();
    await expectServes();
  });

  it('a persistent session cannot grow past maxSubscriptionsPerClient by reconnecting: stored filters count', async () => {
    const chip = await sys.device('dev-subs-persist');
    const subscribe = async (raw: RawMqtt, round: number) => {
      raw.send({
        cmd: 'subscribe',
        messageId: 1,
        subscriptions: Array.from({ length: MAX_SUBSCRIPTIONS }, (_, i) => ({
          topic: `devices/dev-subs-persist/down/${round}/${i}`,
          qos: 1,
        })),
      } as never);
      return ((await raw.next('suback')) as { granted: number[] }).granted;
    };
    const first = await rawDevice(chip, { clean: false });
    expect(await subscribe(first, 0)).toEqual(Array(MAX_SUBSCRIPTIONS).fill(1));
    first.send({ cmd: 'disconnect' } as never);
    await first.closedWithin();
    // The session keeps its filters; a new connection of it must not get a fresh allowance on top of them.
    const second = await rawDevice(chip, { clean: false });
    expect(await subscribe(second, 1)).toEqual(Array(MAX_SUBSCRIPTIONS).fill(0x80));
    // Unsubscribing a stored filter frees its place.
    second.send({ cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['devices/dev-subs-persist/down/0/0'] } as never);
    await second.next('unsuback');
    expect((await subscribe(second, 2)).filter((g) => g === 1)).toHaveLength(1);
    second.destroy();
    await expectServes();
  });
});

describe('a device retransmitting a QoS 2 PUBLISH before PUBREL', () => {
  it('gets PUBREC again and stays connected; the message is delivered once [MQTT-4.3.3-2]', async () => {
    const chip = await sys.device('dev-q2-dup');
    const raw = await rawDevice(chip);
    const topic = 'devices/dev-q2-dup/up/t';
    const envelope = Buffer.from(chip.sealUplink(Buffer.from('once'), topic));
    let deliveries = 0;
    const count = (t: string) => t === topic && deliveries++;
    watcher.on('message', count);
    const publish = (dup: boolean) =>
      raw.send({ cmd: 'publish', topic, payload: envelope, qos: 2, retain: false, dup, messageId: 9 });
    publish(false);
    expect(((await raw.next('pubrec')) as { messageId: number }).messageId).toBe(9);
    // The PUBREC was lost on the way (as far as the device knows): the same packet again, DUP set.
    raw.received.length = 0;
    publish(true);
    expect(((await raw.next('pubrec')) as { messageId: number }).messageId).toBe(9);
    raw.send({ cmd: 'pubrel', messageId: 9 } as never);
    await raw.next('pubcomp');
    raw.send({ cmd: 'pingreq' } as never);
    await raw.next('pingresp');
    watcher.off('message', count);
    expect(deliveries).toBe(1);
    raw.destroy();
    await expectServes();
  });

  it('on a new connection of its persistent session: PUBREC, not a replay refusal [MQTT-4.4.0-1]', async () => {
    const chip = await sys.device('dev-q2-resume');
    const topic = 'devices/dev-q2-resume/up/t';
    const first = await rawDevice(chip, { clean: false });
    const envelope = Buffer.from(chip.sealUplink(Buffer.from('once'), topic));
    first.send({ cmd: 'publish', topic, payload: envelope, qos: 2, retain: false, dup: false, messageId: 4 });
    await first.next('pubrec');
    first.reset(); // the device never saw the PUBREC
    await first.closed;
    const second = await rawDevice(chip, { clean: false });
    second.send({ cmd: 'publish', topic, payload: envelope, qos: 2, retain: false, dup: true, messageId: 4 });
    expect(((await second.next('pubrec')) as { messageId: number }).messageId).toBe(4);
    second.send({ cmd: 'pubrel', messageId: 4 } as never);
    await second.next('pubcomp');
    second.destroy();
    await expectServes();
  });
});

describe('two connections of one device at once', () => {
  it('one wins, the other is closed; the plugin keeps one session and the device is served', async () => {
    const chip = await sys.device('dev-race');
    chip.beginSession();
    const password = await sys.deviceToken(chip);
    const before = sys.broker.plugin.sessions;
    const attempts = await Promise.all(
      Array.from({ length: 4 }, () =>
        RawMqtt.connect(sys.mqttUrl, { clientId: 'dev-race', username: 'dev-race', password, clean: false }).catch(
          () => undefined,
        ),
      ),
    );
    const alive = async () => {
      const open = [];
      for (const a of attempts) {
        if (!a || a.returnCode !== 0 || a.raw.socket.destroyed) continue;
        a.raw.send({ cmd: 'pingreq' } as never);
        if (
          await a.raw.next('pingresp', 2000).then(
            () => true,
            () => false,
          )
        )
          open.push(a.raw);
      }
      return open;
    };
    expect(await alive()).toHaveLength(1);
    for (const a of attempts) a?.raw.destroy();
    await Promise.all(attempts.map((a) => a?.raw.closed));
    for (let i = 0; i < 100 && sys.broker.plugin.sessions > before; i++) await new Promise((r) => setTimeout(r, 50));
    expect(sys.broker.plugin.sessions).toBeLessThanOrEqual(before);
    await expectServes();
  });
});

describe('hostile applications', () => {
  it('a PUBLISH with QoS 3, garbage before CONNECT, a CONNECT of another protocol: each connection ends alone', async () => {
    const app = await rawApp('app-qos3');
    app.write(Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01]));
    await app.closedWithin();
    const garbage = await RawMqtt.open(sys.mqttUrl);
    garbage.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
    await garbage.closedWithin();
    const v3 = await RawMqtt.open(sys.mqttUrl);
    v3.write(Buffer.from([0x10, 0x0c, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x09, 0x02, 0x00, 0x1e, 0x00, 0x00]));
    await Promise.race([v3.next('connack').catch(() => undefined), v3.closedWithin()]);
    v3.destroy();
    await expectServes();
  });

  it('a client that never sends PUBREL for its QoS 2 messages, then resets', async () => {
    const app = await rawApp('app-no-pubrel');
    for (let id = 1; id <= 50; id++)
      app.send({
        cmd: 'publish',
        topic: 'devices/dev-legit/down/q2',
        payload: Buffer.from('x'),
        qos: 2,
        retain: false,
        dup: false,
        messageId: id,
      });
    await app.next('pubrec');
    app.reset();
    await expectServes();
  });

  it('subscribing to $SYS, to # and to a filter with an invalid wildcard: refused or disconnected, the broker lives', async () => {
    const app = await rawApp('app-wild');
    app.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: ['$SYS/#', '#', 'devices/+/up/#'].map((topic) => ({ topic, qos: 1 })),
    } as never);
    expect(((await app.next('suback')) as { granted: number[] }).granted).toEqual([0x80, 0x80, 1]);
    app.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'devices/#/up', qos: 0 }] } as never);
    await app.closedWithin();
    await expectServes();
  });
});

/** A PUBLISH written by hand (mqtt-packet refuses some of what a hostile client sends). */
function publishBytes(topic: string, payload: Buffer, qos: 0 | 1 | 2): Buffer {
  const t = Buffer.from(topic);
  const id = qos > 0 ? Buffer.from([0x00, 0x01]) : Buffer.alloc(0);
  const body = Buffer.concat([Buffer.from([t.length >> 8, t.length & 0xff]), t, id, payload]);
  return Buffer.concat([fixedHeader(0x30 | (qos << 1), body.length), body]);
}
