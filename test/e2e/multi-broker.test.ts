// Several `qkey broker`s over one redis-server and one key service: a command published on one broker reaches a
// device on another; a device that moves keeps its persistent session and its queued commands and is taken over
// across brokers; a revocation reaches every broker; kill -9 of a broker loses nothing queued; every key is claimed
// once, whichever broker asks; a broker id is one broker's at a time.
import { Writable } from 'node:stream';
import mqtt, { type MqttClient } from 'mqtt';
import type { IPublishPacket } from 'mqtt-packet';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBrokerConfig } from '../../broker/config.js';
import { type RunningBroker, startBroker } from '../../broker/server.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { FillingMachine } from '../../hsm-emulator/filling-machine.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { parseEnvelope } from '../../protocol/index.js';
import { newChip } from '../helpers/chip.js';
import { removeDir, startTestKms, type TestKms } from '../helpers/kms.js';
import { spawnQkey } from '../helpers/process.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { nextMessage } from '../helpers/system.js';

let redis: TestRedis;
let kms: TestKms;
let a: RunningBroker;
let b: RunningBroker;
let machine: FillingMachine;
let appSecret: string;
const secrets = new Map<string, string>();
const dirs: string[] = [];
const apps: MqttClient[] = [];
const raws: RawMqtt[] = [];
const logs: string[] = [];

async function brokerSecret(brokerId: string): Promise<string> {
  if (!secrets.has(brokerId)) secrets.set(brokerId, (await kms.admin.registerBroker(brokerId)).client_secret);
  return secrets.get(brokerId)!;
}

async function startNode(brokerId: string, secret: string): Promise<RunningBroker> {
  const logger = pino({ level: 'info' }, new Writable({ write: (c, _e, cb) => (logs.push(c.toString()), cb()) }));
  return startBroker(
    loadBrokerConfig(
      {
        mqtt: { port: 0 },
        http: null,
        kmsUrl: kms.url,
        brokerId,
        brokerSecret: secret,
        revocationPollMs: 200,
        redis: redis.url,
      },
      { env: {} },
    ),
    { logger },
  );
}

beforeAll(async () => {
  redis = await startRedis();
  kms = await startTestKms();
  a = await startNode('broker-a', await brokerSecret('broker-a'));
  b = await startNode('broker-b', await brokerSecret('broker-b'));
  machine = new FillingMachine(new Qrng(), kms.admin);
  appSecret = (await kms.admin.registerApp('app-multi')).client_secret;
}, 60_000);

afterAll(async () => {
  await Promise.all(apps.map((c) => c.endAsync(true).catch(() => undefined)));
  raws.forEach((r) => r.destroy());
  await a?.close();
  await b?.close();
  await kms?.stop();
  if (kms) removeDir(kms.dataDir);
  dirs.forEach(removeDir);
  await redis?.stop();
});

async function device(deviceId: string): Promise<SecurityChip> {
  const { chip, dir } = newChip(deviceId);
  dirs.push(dir);
  await machine.fill(chip, { up: 8, down: 8 });
  return chip;
}

async function deviceToken(chip: SecurityChip): Promise<string> {
  const { challenge } = await kms.anon.challenge(chip.deviceId);
  const mac = Buffer.from(chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
  return (await kms.anon.deviceToken(chip.deviceId, challenge, mac)).access_token;
}

/**
 * A device connection to `url`. `newSession` false is an MQTT library reconnecting without telling the chip (the
 * session, and its uplink key, continue). With `subscribe` its downlink space (QoS 1) and status topic.
 */
async function connectDevice(
  url: string,
  chip: SecurityChip,
  o: { clean: boolean; subscribe: boolean; newSession?: boolean },
): Promise<RawMqtt> {
  if (o.newSession !== false) chip.beginSession();
  const password = await deviceToken(chip);
  const { raw, returnCode } = await RawMqtt.connect(url, {
    clientId: chip.deviceId,
    username: chip.deviceId,
    password,
    clean: o.clean,
  });
  raws.push(raw);
  expect(returnCode).toBe(0);
  if (o.subscribe) {
    raw.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: [
        { topic: `devices/${chip.deviceId}/down/#`, qos: 1 },
        { topic: `devices/${chip.deviceId}/status`, qos: 0 },
      ],
    });
    await raw.next('suback');
  }
  return raw;
}

async function app(url: string, name: string): Promise<MqttClient> {
  const { access_token } = await kms.anon.clientToken('app-multi', appSecret);
  const c = await mqtt.connectAsync(url, {
    clientId: `app-multi/${name}`,
    username: 'app-multi',
    password: access_token,
    reconnectPeriod: 0,
  });
  apps.push(c);
  return c;
}

type Publish = IPublishPacket & { payload: Buffer };
const nextPublish = async (raw: RawMqtt) => (await raw.next('publish')) as Publish;
const opened = (chip: SecurityChip, p: Publish) => Buffer.from(chip.openDownlink(p.payload, p.topic)).toString();
const puback = (raw: RawMqtt, p: Publish) => raw.send({ cmd: 'puback', messageId: p.messageId! });
const disconnect = async (raw: RawMqtt) => {
  raw.send({ cmd: 'disconnect' });
  await raw.closedWithin();
};

/** The next command the device gets, acknowledged: with nothing redelivered before it, it is `marker`. */
async function nextCommandIs(raw: RawMqtt, chip: SecurityChip, marker: string, publisher: MqttClient) {
  await publisher.publishAsync(`devices/${chip.deviceId}/down/cmd`, marker, { qos: 1 });
  const p = await nextPublish(raw);
  puback(raw, p);
  expect(opened(chip, p)).toBe(marker);
}

describe('one redis-server, brokers A and B', () => {
  it('a command published on B reaches a device on A, sealed for it; its telemetry reaches an application on B', async () => {
    const chip = await device('dev-cross');
    const onA = await connectDevice(a.urls.mqtt!, chip, { clean: true, subscribe: true });
    const appB = await app(b.urls.mqtt!, 'cross');
    await appB.subscribeAsync('devices/dev-cross/up/#', { qos: 1 });

    await appB.publishAsync('devices/dev-cross/down/cmd', 'reboot', { qos: 1 });
    const cmd = await nextPublish(onA);
    expect(cmd.payload.toString()).not.toContain('reboot');
    expect(opened(chip, cmd)).toBe('reboot');
    puback(onA, cmd);

    const topic = 'devices/dev-cross/up/telemetry';
    const telemetry = nextMessage(appB, 10_000);
    onA.send({
      cmd: 'publish',
      topic,
      payload: Buffer.from(chip.sealUplink(Buffer.from('21.5'), topic)),
      qos: 1,
      messageId: 9,
      dup: false,
      retain: false,
    });
    await onA.next('puback');
    expect((await telemetry).payload.toString()).toBe('21.5');
    await disconnect(onA);
  });

  it('a device that moves from A to B keeps its persistent session: commands queued meanwhile come on B, once', async () => {
    const chip = await device('dev-move');
    await disconnect(await connectDevice(a.urls.mqtt!, chip, { clean: false, subscribe: true }));
    const appB = await app(b.urls.mqtt!, 'move');
    for (const n of [1, 2, 3]) await appB.publishAsync('devices/dev-move/down/cmd', `cmd ${n}`, { qos: 1 });

    const onB = await connectDevice(b.urls.mqtt!, chip, { clean: false, subscribe: false });
    const got: Publish[] = [];
    for (let i = 0; i < 3; i++) got.push(await nextPublish(onB));
    expect(got.map((p) => opened(chip, p))).toEqual(['cmd 1', 'cmd 2', 'cmd 3']);
    // Sealed on B under this session's one downlink key.
    expect(new Set(got.map((p) => parseEnvelope(p.payload).keyIndex)).size).toBe(1);
    got.forEach((p) => puback(onB, p));
    await disconnect(onB);

    // Acknowledged on B: back on A, nothing comes again before a new command.
    const onA = await connectDevice(a.urls.mqtt!, chip, { clean: false, subscribe: false });
    await nextCommandIs(onA, chip, 'after the move', appB);
    await disconnect(onA);
  });

  it("a connection on B takes the device's connection on A over; the unacknowledged command comes again on B, resealed", async () => {
    const chip = await device('dev-takeover');
    const onA = await connectDevice(a.urls.mqtt!, chip, { clean: false, subscribe: true });
    const appA = await app(a.urls.mqtt!, 'takeover');
    await appA.publishAsync('devices/dev-takeover/down/cmd', 'open valve', { qos: 1 });
    const first = await nextPublish(onA); // not acknowledged

    const onB = await connectDevice(b.urls.mqtt!, chip, { clean: false, subscribe: false });
    await onA.closedWithin(); // [MQTT-3.1.4-2] across brokers
    const again = await nextPublish(onB);
    expect(again.messageId).toBe(first.messageId);
    expect(opened(chip, again)).toBe('open valve');
    expect(parseEnvelope(again.payload).keyIndex).not.toBe(parseEnvelope(first.payload).keyIndex);
    puback(onB, again);
    await nextCommandIs(onB, chip, 'next', appA);
    await disconnect(onB);
  });

  it('an uplink key claimed on A is refused on B (key_spent); the new session it asks for is accepted on B', async () => {
    const chip = await device('dev-key');
    const topic = 'devices/dev-key/up/telemetry';
    const appB = await app(b.urls.mqtt!, 'key');
    await appB.subscribeAsync('devices/dev-key/up/#', { qos: 1 });
    const onA = await connectDevice(a.urls.mqtt!, chip, { clean: true, subscribe: true });
    const seal = (text: string) => Buffer.from(chip.sealUplink(Buffer.from(text), topic));
    // Everything appB gets on the topic, in order: 'one' crosses the brokers through Redis on its own
    // schedule, so the test waits for it rather than letting it race the later expectations.
    const seen: string[] = [];
    appB.on('message', (t, payload) => t === topic && seen.push(payload.toString()));
    const firstSeen = nextMessage(appB, 10_000, (t) => t === topic);
    const sent = seal('one');
    onA.send({ cmd: 'publish', topic, payload: sent, qos: 1, messageId: 1, dup: false, retain: false });
    await onA.next('puback');
    expect((await firstSeen).payload.toString()).toBe('one');

    // The MQTT library reconnects, to B, without a new chip session: the same key, claimed by A.
    const resumed = await connectDevice(b.urls.mqtt!, chip, { clean: true, subscribe: true, newSession: false });
    resumed.send({ cmd: 'publish', topic, payload: seal('two'), qos: 1, messageId: 2, dup: false, retain: false });
    const notice = JSON.parse((await nextPublish(resumed)).payload.toString()) as { reason: string };
    expect(notice.reason).toBe('key_spent');
    await resumed.closedWithin();

    // A thief replaying A's envelope on B fares no better.
    const thief = await connectDevice(b.urls.mqtt!, chip, { clean: true, subscribe: true, newSession: false });
    thief.send({ cmd: 'publish', topic, payload: sent, qos: 1, messageId: 3, dup: false, retain: false });
    expect(JSON.parse((await nextPublish(thief)).payload.toString())).toMatchObject({ reason: 'key_spent' });
    await thief.closedWithin();

    const fresh = await connectDevice(b.urls.mqtt!, chip, { clean: true, subscribe: true });
    const received = nextMessage(appB, 10_000, (t) => t === topic);
    fresh.send({ cmd: 'publish', topic, payload: seal('three'), qos: 1, messageId: 4, dup: false, retain: false });
    await fresh.next('puback');
    expect((await received).payload.toString()).toBe('three');
    // Neither the resumed session's 'two' nor the thief's replay of 'one' reached the application.
    expect(seen).toEqual(['one', 'three']);
    await disconnect(fresh);
  });

  it('a retained command published on A is delivered on B to a device that subscribes there, sealed for it', async () => {
    const chip = await device('dev-retained');
    const appA = await app(a.urls.mqtt!, 'retained');
    await appA.publishAsync('devices/dev-retained/down/config', 'interval=60', { qos: 1, retain: true });
    const onB = await connectDevice(b.urls.mqtt!, chip, { clean: true, subscribe: true });
    const p = await nextPublish(onB);
    expect(p.retain).toBe(true);
    expect(opened(chip, p)).toBe('interval=60');
    puback(onB, p);
    await disconnect(onB);
  });

  it('a revocation reaches every broker: devices on A and on B are disconnected', async () => {
    const one = await device('dev-revoke-a');
    const two = await device('dev-revoke-b');
    const onA = await connectDevice(a.urls.mqtt!, one, { clean: true, subscribe: false });
    const onB = await connectDevice(b.urls.mqtt!, two, { clean: true, subscribe: false });
    await kms.admin.revokeDevice('dev-revoke-a');
    await kms.admin.revokeDevice('dev-revoke-b');
    await onA.closedWithin();
    await onB.closedWithin();
  });

  it('a second broker with a broker id in use on this Redis is refused at start', async () => {
    await expect(startNode('broker-a', await brokerSecret('broker-a'))).rejects.toThrow(
      /broker id broker-a is in use by another broker/,
    );
  });
});

describe('kill -9 of a broker process while B runs', () => {
  it('loses nothing queued: the queued and the in-flight commands come on B', async () => {
    const secret = await brokerSecret('broker-c');
    const c = await spawnQkey(
      [
        'broker',
        ...['--port', '0', '--http-port', 'off', '--kms', kms.url, '--broker-id', 'broker-c'],
        ...['--redis', redis.url, '--semi-space', '0', '--log-level', 'warn'],
      ],
      /qkey broker listening: mqtt (mqtt:\/\/\S+?),? /,
      { QKEY_BROKER_SECRET: secret },
    );
    try {
      const chip = await device('dev-kill');
      await disconnect(await connectDevice(c.ready, chip, { clean: false, subscribe: true }));
      const appC = await app(c.ready, 'kill');
      await appC.publishAsync('devices/dev-kill/down/cmd', 'first', { qos: 1 });
      await appC.publishAsync('devices/dev-kill/down/cmd', 'second', { qos: 1 });
      const onC = await connectDevice(c.ready, chip, { clean: false, subscribe: false });
      const inFlight = await nextPublish(onC); // delivered, never acknowledged
      expect(opened(chip, inFlight)).toBe('first');

      c.proc.kill('SIGKILL');
      await onC.closedWithin();
      const onB = await connectDevice(b.urls.mqtt!, chip, { clean: false, subscribe: false });
      const again = [await nextPublish(onB), await nextPublish(onB)];
      expect(again.map((p) => opened(chip, p))).toEqual(['first', 'second']);
      expect(again[0]!.messageId).toBe(inFlight.messageId);
      again.forEach((p) => puback(onB, p));
      await nextCommandIs(onB, chip, 'after the kill', await app(b.urls.mqtt!, 'kill-b'));
      await disconnect(onB);
    } finally {
      await c.stop('SIGKILL');
    }
  });
});
