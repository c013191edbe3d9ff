// The durable store across kill -9 of a real `qkey broker` process: every command queued for a device, or sent and
// not acknowledged, reaches it after the restart with exactly its QoS, sealed once under its new session's key;
// an application's copy of the same message stays plaintext; retained messages survive; the queue bound counts
// what the store held; a store another broker holds, or a damaged one, is refused and left as it was.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import type { IPublishPacket } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { parseEnvelope } from '../../protocol/index.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { type QkeyProcess, spawnQkey } from '../helpers/process.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const CRASH_AT_QUEUED_COMMIT = fileURLToPath(new URL('../helpers/crash-at-queued-commit.mjs', import.meta.url));

let sys: TestSystem;
const cleanup: Array<() => unknown> = [];
beforeAll(async () => {
  sys = await startTestSystem();
});
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
  await sys.stop();
});

type Publish = IPublishPacket & { payload: Buffer };

/** A `qkey broker` process on `data` (its store), registered at the test key service as `brokerId`. */
class BrokerProcess {
  private proc: QkeyProcess | undefined;
  url = '';
  constructor(
    readonly brokerId: string,
    readonly data: string,
    private readonly secret: string,
    private readonly extra: string[] = [],
  ) {}

  static async create(brokerId: string, extra: string[] = []): Promise<BrokerProcess> {
    const data = tempDir('qkey-durable-');
    cleanup.push(() => removeDir(data));
    const { client_secret } = await sys.kms.admin.registerBroker(brokerId);
    const b = new BrokerProcess(brokerId, data, client_secret, extra);
    cleanup.push(() => b.proc?.stop('SIGKILL'));
    return b;
  }

  get args(): string[] {
    return [
      ...['broker', '--port', '0', '--http-port', 'off', '--kms', sys.kms.url, '--broker-id', this.brokerId],
      ...['--data', this.data, ...this.extra],
    ];
  }

  get env() {
    return { QKEY_BROKER_SECRET: this.secret, QKEY_BROKER_LOG_LEVEL: 'warn' };
  }

  /** Starts the broker; `crashAtQueuedCommit`: it kills itself at that commit (helpers/crash-at-queued-commit.mjs). */
  async start(crashAtQueuedCommit?: number): Promise<void> {
    const crash = crashAtQueuedCommit !== undefined;
    this.proc = await spawnQkey(
      this.args,
      /mqtt (mqtt:\/\/[^,\s]+)/,
      { ...this.env, ...(crash && { QKEY_TEST_CRASH_AT_QUEUED_COMMIT: String(crashAtQueuedCommit) }) },
      undefined,
      crash ? ['--import', CRASH_AT_QUEUED_COMMIT] : [],
    );
    this.url = this.proc.ready;
  }

  /** Waits for the process to end by itself; resolves with the signal that ended it. */
  async ended(): Promise<NodeJS.Signals | null> {
    const p = this.proc!.proc;
    if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
    return p.signalCode;
  }

  async kill(): Promise<void> {
    await this.proc!.stop('SIGKILL');
  }

  async stop(): Promise<void> {
    expect(await this.proc!.stop('SIGTERM')).toBe(0);
  }
}

/** A device connection (clean session 0): a new chip session, so a new downlink key for what is sealed on it. */
async function deviceOn(url: string, chip: SecurityChip, subscribeQos?: 1 | 2): Promise<RawMqtt> {
  chip.beginSession();
  const password = await sys.deviceToken(chip);
  const { raw, returnCode } = await RawMqtt.connect(url, {
    clientId: chip.deviceId,
    username: chip.deviceId,
    password,
    clean: false,
    keepalive: 0,
  });
  expect(returnCode).toBe(0);
  cleanup.push(() => raw.socket.destroy());
  if (subscribeQos) {
    const topic = `devices/${chip.deviceId}/down/#`;
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos: subscribeQos }] });
    await raw.next('suback');
  }
  return raw;
}

async function leave(raw: RawMqtt): Promise<void> {
  raw.send({ cmd: 'disconnect' });
  await raw.closed;
}

/** The next `count` PUBLISH packets the connection receives. */
async function drain(raw: RawMqtt, count: number): Promise<Publish[]> {
  const got: Publish[] = [];
  for (let i = 0; i < count; i++) got.push((await raw.next('publish')) as Publish);
  return got;
}

async function nothingMore(raw: RawMqtt): Promise<void> {
  raw.send({ cmd: 'pingreq' });
  await raw.next('pingresp');
  expect(raw.received.filter((p) => p.cmd === 'publish' || p.cmd === 'pubrel')).toEqual([]);
}

async function app(url: string, appId: string, options: mqtt.IClientOptions = {}): Promise<MqttClient> {
  const { client_secret } = await sys.kms.admin.registerApp(appId, {
    publish: ['devices/+/down/#'],
    subscribe: ['devices/+/down/#'],
  });
  const { access_token } = await sys.kms.anon.clientToken(appId, client_secret);
  return connectApp(url, appId, access_token, options);
}

async function connectApp(url: string, appId: string, token: string, options: mqtt.IClientOptions = {}) {
  const c = await mqtt.connectAsync(url, {
    clientId: `${appId}/durable`,
    username: appId,
    password: token,
    reconnectPeriod: 0,
    ...options,
  });
  cleanup.push(() => c.end(true));
  return c;
}

const opened = (chip: SecurityChip, p: Publish) => Buffer.from(chip.openDownlink(p.payload, p.topic)).toString();
const keyOf = (p: Publish) => parseEnvelope(p.payload).keyIndex;

describe('kill -9 and restart', () => {
  it('queued and unacknowledged commands come once more, each with its QoS, sealed once under the new session key', async () => {
    const broker = await BrokerProcess.create('durable-1');
    await broker.start();
    const q1 = await sys.device('dur-q1');
    const q2 = await sys.device('dur-q2');
    const late = await sys.device('dur-late');
    await leave(await deviceOn(broker.url, q1, 1));
    await leave(await deviceOn(broker.url, q2, 2));
    // An application with a persistent session on the same commands: its copy of each stays plaintext.
    const { client_secret } = await sys.kms.admin.registerApp('dur-watch', { subscribe: ['devices/+/down/#'] });
    const watchToken = (await sys.kms.anon.clientToken('dur-watch', client_secret)).access_token;
    const watch = await connectApp(broker.url, 'dur-watch', watchToken, { clean: false });
    await watch.subscribeAsync('devices/+/down/#', { qos: 1 });
    await watch.endAsync();

    const ops = await app(broker.url, 'dur-ops');
    for (const c of ['c1', 'c2', 'c3']) await ops.publishAsync(`devices/${q1.deviceId}/down/cmd`, c, { qos: 1 });
    for (const c of ['x1', 'x2']) await ops.publishAsync(`devices/${q2.deviceId}/down/cmd`, c, { qos: 2 });
    await ops.publishAsync(`devices/${late.deviceId}/down/config`, 'retained cfg', { qos: 1, retain: true });
    await ops.publishAsync(`devices/${q1.deviceId}/down/cmd`, 'qos0 while away', { qos: 0 });
    await ops.endAsync();

    // q1 receives its three commands and acknowledges none; q2 answers PUBREC to x1 only.
    const q1a = await deviceOn(broker.url, q1);
    const before = await drain(q1a, 3);
    expect(before.map((p) => opened(q1, p))).toEqual(['c1', 'c2', 'c3']);
    const q2a = await deviceOn(broker.url, q2);
    const [x1, x2] = await drain(q2a, 2);
    expect([opened(q2, x1!), opened(q2, x2!)]).toEqual(['x1', 'x2']);
    q2a.send({ cmd: 'pubrec', messageId: x1!.messageId! });
    await q2a.next('pubrel');

    await broker.kill();
    await broker.start();

    // q1: all three again, QoS 1, same packet identifiers, each sealed once under the new session's key.
    const q1b = await deviceOn(broker.url, q1);
    const after = await drain(q1b, 3);
    expect(after.map((p) => p.qos)).toEqual([1, 1, 1]);
    expect(after.map((p) => p.messageId)).toEqual(before.map((p) => p.messageId));
    expect(after.map((p) => opened(q1, p))).toEqual(['c1', 'c2', 'c3']);
    for (const p of after) expect(keyOf(p)).not.toBe(keyOf(before[0]!));
    for (const p of after) q1b.send({ cmd: 'puback', messageId: p.messageId! });
    await nothingMore(q1b);

    // q2: x1 was PUBREC'd, so only its PUBREL comes again [MQTT-4.3.3-1]; x2 comes again, QoS 2, freshly sealed.
    const q2b = await deviceOn(broker.url, q2);
    const rel = await q2b.next('pubrel');
    expect((rel as { messageId: number }).messageId).toBe(x1!.messageId);
    const [x2again] = await drain(q2b, 1);
    expect(x2again!.qos).toBe(2);
    expect(x2again!.messageId).toBe(x2!.messageId);
    expect(opened(q2, x2again!)).toBe('x2');
    expect(keyOf(x2again!)).not.toBe(keyOf(x2!));
    q2b.send({ cmd: 'pubcomp', messageId: x1!.messageId! });
    q2b.send({ cmd: 'pubrec', messageId: x2again!.messageId! });
    await q2b.next('pubrel');
    q2b.send({ cmd: 'pubcomp', messageId: x2again!.messageId! });
    await nothingMore(q2b);

    // The retained command survived: a device subscribing now gets it, sealed for it, retain set.
    const lateConn = await deviceOn(broker.url, late, 1);
    const [cfg] = await drain(lateConn, 1);
    expect(cfg!.retain).toBe(true);
    expect(opened(late, cfg!)).toBe('retained cfg');

    // The application's own copies of the same messages: plaintext, all five (its QoS 1 grant).
    const got: string[] = [];
    const watchAgain = mqtt.connect(broker.url, {
      clientId: 'dur-watch/durable',
      username: 'dur-watch',
      password: watchToken,
      clean: false,
      reconnectPeriod: 0,
    });
    cleanup.push(() => watchAgain.end(true));
    await new Promise<void>((resolve) =>
      watchAgain.on('message', (topic, payload) => {
        if (topic.endsWith('/cmd')) got.push(payload.toString());
        if (got.length === 5) resolve();
      }),
    );
    expect(got.sort()).toEqual(['c1', 'c2', 'c3', 'x1', 'x2']);

    // Acknowledged is gone for good: after another kill -9, nothing comes again.
    await broker.kill();
    await broker.start();
    await nothingMore(await deviceOn(broker.url, q1));
    await nothingMore(await deviceOn(broker.url, q2));
    await broker.kill();
  }, 60_000);

  it('a QoS 1 command is acknowledged only once stored: killed before its commit, the broker never acknowledged it', async () => {
    const broker = await BrokerProcess.create('durable-ack');
    await broker.start(2); // the second commit that queues a message never happens
    const chip = await sys.device('dur-ack');
    await leave(await deviceOn(broker.url, chip, 1));
    const { client_secret } = await sys.kms.admin.registerApp('dur-ack-ops', { publish: ['devices/+/down/#'] });
    const token = (await sys.kms.anon.clientToken('dur-ack-ops', client_secret)).access_token;
    const { raw: ops } = await RawMqtt.connect(broker.url, {
      clientId: 'dur-ack-ops/raw',
      username: 'dur-ack-ops',
      password: token,
      keepalive: 0,
    });
    cleanup.push(() => ops.socket.destroy());
    const command = (payload: string, messageId: number) =>
      ops.send({
        cmd: 'publish',
        topic: `devices/${chip.deviceId}/down/cmd`,
        payload: Buffer.from(payload),
        qos: 1,
        messageId,
        retain: false,
        dup: false,
      });
    command('c1', 1);
    await ops.next('puback');
    command('c2', 2); // its commit is where the broker dies
    await ops.closed;
    expect(await broker.ended()).toBe('SIGKILL');
    const acknowledged = ops.received.filter((p) => p.cmd === 'puback').map((p) => p.messageId);
    await broker.start();
    const conn = await deviceOn(broker.url, chip);
    const got = await drain(conn, 1);
    expect(got.map((p) => opened(chip, p))).toEqual(['c1']);
    for (const p of got) conn.send({ cmd: 'puback', messageId: p.messageId! });
    await nothingMore(conn);
    // c2 was lost with the process, and its sender was not told otherwise: it will send it again.
    expect(acknowledged).toEqual([]);
    await broker.kill();
  }, 60_000);

  it('the queue bound counts what the store held: after a restart a full queue still takes nothing more', async () => {
    const broker = await BrokerProcess.create('durable-2');
    writeFileSync(join(broker.data, 'broker.json'), JSON.stringify({ maxQueuedMessages: 3 }));
    broker['extra'].push('--config', join(broker.data, 'broker.json'));
    await broker.start();
    const chip = await sys.device('dur-bound');
    await leave(await deviceOn(broker.url, chip, 1));
    const { client_secret } = await sys.kms.admin.registerApp('dur-bound-ops', { publish: ['devices/+/down/#'] });
    const token = (await sys.kms.anon.clientToken('dur-bound-ops', client_secret)).access_token;
    const ops = await connectApp(broker.url, 'dur-bound-ops', token);
    // PUBCOMP (and PUBACK) come once the message is stored.
    for (const c of ['m1', 'm2', 'm3']) await ops.publishAsync(`devices/${chip.deviceId}/down/cmd`, c, { qos: 2 });
    await ops.endAsync();
    await broker.kill();
    await broker.start();
    const again = await connectApp(broker.url, 'dur-bound-ops', token);
    for (const c of ['m4', 'm5']) await again.publishAsync(`devices/${chip.deviceId}/down/cmd`, c, { qos: 1 });
    await again.endAsync();
    const conn = await deviceOn(broker.url, chip);
    const got = await drain(conn, 3);
    expect(got.map((p) => opened(chip, p))).toEqual(['m1', 'm2', 'm3']);
    for (const p of got) conn.send({ cmd: 'puback', messageId: p.messageId! });
    await nothingMore(conn);
    await broker.kill();
  }, 60_000);
});

describe('the store file', () => {
  it('a second broker on the same store is refused (BROKER_STORE_ERR_LOCKED) and the first carries on', async () => {
    const broker = await BrokerProcess.create('durable-3');
    await broker.start();
    const second = await spawnQkey(broker.args, /mqtt (mqtt:\/\/[^,\s]+)/, broker.env).then(
      () => 'started',
      (err: Error) => err.message,
    );
    expect(second).toMatch(/exited with 1 before it was ready/);
    expect(second).toMatch(/BROKER_STORE_ERR_LOCKED: .*broker-durable-3\.db is in use by another broker process/);
    const chip = await sys.device('dur-lock');
    await leave(await deviceOn(broker.url, chip, 1));
    await broker.kill();
  }, 30_000);

  it('a damaged store is refused (BROKER_STORE_ERR_DAMAGED) and left as it was, never started afresh', async () => {
    const broker = await BrokerProcess.create('durable-4');
    await broker.start();
    const chip = await sys.device('dur-damage');
    await leave(await deviceOn(broker.url, chip, 1));
    await broker.stop(); // a clean stop: everything is in the main file, no write-ahead log left beside it
    const file = join(broker.data, 'broker-durable-4.db');
    const bytes = readFileSync(file);
    expect(bytes.length).toBeGreaterThan(4096 * 2);
    // Page 2 onwards overwritten: the header still says SQLite, the tables do not hold together.
    bytes.fill(0x5a, 4096);
    writeFileSync(file, bytes);
    const r = await spawnQkey(broker.args, /mqtt (mqtt:\/\/[^,\s]+)/, broker.env).then(
      () => 'started',
      (err: Error) => err.message,
    );
    expect(r).toMatch(/exited with 1 before it was ready/);
    expect(r).toMatch(/BROKER_STORE_ERR_DAMAGED: .*broker-durable-4\.db/);
    expect(readFileSync(file).equals(bytes)).toBe(true);
  }, 30_000);
});
