// Attacks on persistent sessions' stored queues (docs/PROTOCOL.md §9.2, §19, §22.6, §22.8): what the broker does
// with them across reconnects, kills, takeovers and key rotation, for devices receiving sealed commands and for
// applications holding session keys, on the in-memory, SQLite and Redis (two brokers) stores. Every client here is a
// raw MQTT connection under the test's full control: what it acknowledges, when it reads its socket, when it dies.
import { connect as netConnect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import type { MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBrokerConfig, type BrokerOverrides } from '../../broker/config.js';
import { type RunningBroker, startBroker } from '../../broker/server.js';
import type { SecurityChip } from '../../hsm-emulator/chip.js';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { appSessionChallenge, appSessionKey } from '../../kms-api/app-session-client.js';
import { KmsClient } from '../../kms-api/client.js';
import {
  APP_SESSION_TOPIC,
  challengeMessage,
  EnvelopeKey,
  openEnvelope,
  parseEnvelope,
  parseRotationNotice,
  ReplayWindow,
  sealEnvelope,
  signChallenge,
  unwrapSessionKey,
} from '../../protocol/index.js';
import { sealTelemetryForApps } from '../helpers/app-sessions.js';
import { removeDir, startTestKms, tempDir } from '../helpers/kms.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startTestSystem, systemOn, type TestSystem } from '../helpers/system.js';

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const range = (n: number, prefix = '') => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

async function until(ok: () => boolean, what: string, ms = 8000): Promise<void> {
  for (const end = Date.now() + ms; !ok();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await pause(20);
  }
}

async function metricOf(s: { broker: RunningBroker }, name: string): Promise<number> {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await s.broker.registry.metrics());
  return Number(m?.[1] ?? 0);
}
const DROPPED = 'broker_downlink_total\\{outcome="dropped_no_key"\\}';

type Publish = Packet & {
  cmd: 'publish';
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  dup: boolean;
  messageId?: number;
  retain: boolean;
};

/** A raw MQTT 3.1.1 connection: every packet it receives is handed to `on`, and kept. */
class Raw {
  readonly packets: Packet[] = [];
  readonly closed: Promise<void>;
  on: (p: Packet) => void = () => undefined;
  private waiters: Array<() => void> = [];
  private nextId = 1;
  private readonly acks = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();

  private constructor(readonly socket: Socket) {
    const parser = mqttPacket.parser();
    parser.on('packet', (p: Packet) => {
      this.packets.push(p);
      if (p.cmd === 'puback') this.acks.get(p.messageId!)?.resolve();
      this.on(p);
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('data', (d: Buffer) => parser.parse(d));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        for (const a of this.acks.values()) a.reject(new Error('connection closed'));
        for (const w of this.waiters.splice(0)) w();
        resolve();
      }),
    );
  }

  /** Connects and sends CONNECT; `before` runs before the CONNACK can arrive. Resolves with the return code. */
  static async connect(
    url: string,
    o: { clientId: string; username: string; password: string; clean: boolean },
    before?: (raw: Raw) => void,
  ): Promise<{ raw: Raw; returnCode: number }> {
    const { hostname, port } = new URL(url);
    const socket = netConnect(Number(port), hostname);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const raw = new Raw(socket);
    before?.(raw);
    raw.send({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: o.clean,
      keepalive: 60,
      clientId: o.clientId,
      username: o.username,
      password: Buffer.from(o.password),
    } as Packet);
    const connack = (await raw.next('connack')) as { returnCode: number };
    return { raw, returnCode: connack.returnCode };
  }

  get alive(): boolean {
    return !this.socket.destroyed;
  }

  send(p: Packet): void {
    if (!this.socket.destroyed) this.socket.write(mqttPacket.generate(p));
  }

  /** QoS 1 PUBLISH; resolves on its PUBACK, rejects when the connection closes first. */
  publish(topic: string, payload: Buffer | string): Promise<void> {
    const messageId = this.nextId++;
    const acked = new Promise<void>((resolve, reject) => this.acks.set(messageId, { resolve, reject }));
    this.send({ cmd: 'publish', topic, payload, qos: 1, messageId, retain: false, dup: false });
    return acked;
  }

  async subscribe(filter: string, qos: 0 | 1 | 2): Promise<void> {
    const messageId = this.nextId++;
    this.send({ cmd: 'subscribe', messageId, subscriptions: [{ topic: filter, qos }] });
    await this.next('suback');
  }

  /** The first packet of kind `cmd` received so far or next (not removed). */
  async next(cmd: Packet['cmd'], ms = 8000): Promise<Packet> {
    const end = Date.now() + ms;
    for (;;) {
      const p = this.packets.find((x) => x.cmd === cmd);
      if (p) return p;
      if (this.socket.destroyed || Date.now() > end) throw new Error(`no ${cmd}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), pause(100)]);
    }
  }

  async disconnect(): Promise<void> {
    this.send({ cmd: 'disconnect' });
    await this.closed;
  }

  kill(): void {
    this.socket.resetAndDestroy();
  }
}

interface AppId {
  appId: string;
  secret: string;
  sm2: { privateKey: string; publicKey: string };
}

/** One delivery the app opened: its plaintext and how it came. */
interface Got {
  text: string;
  generation: number;
  dup: boolean;
  qos: number;
  messageId: number | undefined;
}

/**
 * An application connection: the §22.1 handshake, announcements, deliveries opened under whichever generation sealed
 * them, and the acknowledgements it sends under the test's control (`ack`: PUBACK/PUBREC at once; `complete`:
 * PUBCOMP at a PUBREL). Every PUBLISH on the wire is kept for inspection.
 */
class App {
  readonly got: Got[] = [];
  readonly wire: Publish[] = [];
  readonly notices: number[] = [];
  refused = 0;
  generation = -1;
  /** Acknowledge (PUBACK, or PUBREC for QoS 2) a delivery: all, none, or those whose plaintext passes. */
  ack: boolean | ((text: string | undefined) => boolean) = true;
  complete = true;
  autoRotate = true;
  onGot: (g: Got) => void = () => undefined;
  private readonly keys = new Map<number, { key: EnvelopeKey; replay: ReplayWindow; seq: number }>();
  private rotating: Promise<void> | undefined;

  private constructor(
    readonly raw: Raw,
    readonly id: AppId,
    private readonly kms: KmsClient,
    private readonly brokerId: string,
  ) {}

  static async token(kmsUrl: string, id: AppId): Promise<string> {
    return (await new KmsClient(kmsUrl).clientToken(id.appId, id.secret)).access_token;
  }

  /** Connects (CONNACK 0 expected) with client id `<app>/s`; nothing is announced yet. */
  static async connect(
    url: string,
    kmsUrl: string,
    id: AppId,
    o: { clean?: boolean; token?: string; brokerId?: string; setup?: (a: App) => void } = {},
  ): Promise<App> {
    const token = o.token ?? (await App.token(kmsUrl, id));
    let app: App | undefined;
    const { returnCode } = await Raw.connect(
      url,
      { clientId: `${id.appId}/s`, username: id.appId, password: token, clean: o.clean ?? false },
      (raw) => {
        app = new App(raw, id, new KmsClient(kmsUrl, { token }), o.brokerId ?? 'test-broker');
        raw.on = (p) => app!.receive(p);
        o.setup?.(app);
      },
    );
    expect(returnCode).toBe(0);
    return app!;
  }

  async issue(): Promise<{ keyId: string; key: Uint8Array }> {
    const c = await appSessionChallenge(this.kms, this.brokerId);
    const message = challengeMessage({
      appId: c.app_id,
      kmeId: c.kme_id,
      brokerId: c.broker_id,
      challenge: Buffer.from(c.challenge, 'base64'),
      expiresAt: c.expires_at,
    });
    const sig = signChallenge(message, this.id.sm2.privateKey, this.id.sm2.publicKey);
    const issued = await appSessionKey(this.kms, this.brokerId, c.challenge, Buffer.from(sig).toString('base64'));
    const key = unwrapSessionKey(Buffer.from(issued.wrapped_key, 'base64'), this.id.sm2.privateKey);
    if (!key) throw new Error('the session key did not unwrap');
    return { keyId: issued.key_ID, key };
  }

  /** Opens under `index` from now on, and announces it; resolves on the PUBACK. */
  async announce(index: number, keyId: string, key: Uint8Array): Promise<void> {
    this.keys.set(index, { key: new EnvelopeKey(key), replay: new ReplayWindow(), seq: 0 });
    await this.raw.publish(APP_SESSION_TOPIC, JSON.stringify({ key_ID: keyId, key_index: index }));
    if (index > this.generation) this.generation = index;
  }

  /** The next generation: issued, and announced. */
  rotate(): Promise<void> {
    this.rotating ??= (async () => {
      const { keyId, key } = await this.issue();
      await this.announce(Math.max(this.generation, ...this.keys.keys()) + 1, keyId, key);
    })().finally(() => (this.rotating = undefined));
    return this.rotating;
  }

  /** An app-up envelope under the newest generation. */
  seal(topic: string, text: string): Buffer {
    const g = this.keys.get(this.generation)!;
    return Buffer.from(
      sealEnvelope(Buffer.from(text), {
        key: g.key,
        keyIndex: this.generation,
        seq: g.seq++,
        deviceId: this.id.appId,
        topic,
        direction: 'app-up',
      }),
    );
  }

  private receive(p: Packet): void {
    if (p.cmd === 'pubrel' && this.complete) this.raw.send({ cmd: 'pubcomp', messageId: p.messageId! });
    if (p.cmd !== 'publish') return;
    const pub = p as Publish;
    if (pub.topic === APP_SESSION_TOPIC) {
      const n = parseRotationNotice(pub.payload);
      if (n !== undefined) {
        this.notices.push(n);
        if (this.autoRotate && n === Math.max(this.generation, ...this.keys.keys()))
          this.rotate().catch(() => undefined);
      }
      return;
    }
    this.wire.push(pub);
    let text: string | undefined;
    try {
      const parsed = parseEnvelope(pub.payload);
      const g = this.keys.get(parsed.keyIndex);
      if (!g) throw new Error('unknown generation');
      const { payload } = openEnvelope(parsed, {
        key: g.key,
        deviceId: this.id.appId,
        topic: pub.topic,
        direction: 'app-down',
        replay: g.replay,
      });
      text = Buffer.from(payload).toString();
      const got = {
        text,
        generation: parsed.keyIndex,
        dup: pub.dup,
        qos: pub.qos,
        messageId: pub.messageId,
      };
      this.got.push(got);
      this.onGot(got);
    } catch {
      this.refused++;
    }
    const ack = typeof this.ack === 'function' ? this.ack(text) : this.ack;
    if (ack && pub.qos === 1) this.raw.send({ cmd: 'puback', messageId: pub.messageId! });
    if (ack && pub.qos === 2) this.raw.send({ cmd: 'pubrec', messageId: pub.messageId! });
  }

  texts(): string[] {
    return this.got.map((g) => g.text);
  }

  /**
   * Nothing on the wire was anything but an envelope, nor carried one of `texts` in clear (those of 8 characters or
   * more: a shorter one turns up in random ciphertext by chance).
   */
  expectAllSealed(texts: string[]): void {
    for (const { payload } of this.wire) {
      expect(() => parseEnvelope(payload)).not.toThrow();
      for (const t of texts) if (t.length >= 8) expect(payload.includes(Buffer.from(t))).toBe(false);
    }
  }

  /** No generation sealed more than `limit` deliveries (the app's own publishes under it counted in `own`). */
  expectGenerationsWithin(limit: number, own: Map<number, number> = new Map()): void {
    const per = new Map<number, number>();
    for (const g of this.got) per.set(g.generation, (per.get(g.generation) ?? 0) + 1);
    for (const [gen, n] of per)
      expect({ gen, n: Math.min(n + (own.get(gen) ?? 0), limit) }).toEqual({ gen, n: n + (own.get(gen) ?? 0) });
  }
}

/** What the app received across its connections, in order, MQTT-permitted redeliveries (DUP 1 of one seen) out. */
function deduped(...conns: Array<App | undefined>): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const c of conns)
    for (const g of c?.got ?? []) {
      if (seen.has(g.text) && g.dup) continue;
      seen.add(g.text);
      out.push(g.text);
    }
  return out;
}

/** Each delivery across connections, in order: its text, its DUP flag, and whether an earlier delivery had it. */
function dupFlags(conns: Array<{ got: Array<{ text: string; dup: boolean }> }>): Array<[string, boolean, boolean]> {
  const seen = new Set<string>();
  const out: Array<[string, boolean, boolean]> = [];
  for (const c of conns)
    for (const g of c.got) {
      out.push([g.text, g.dup, seen.has(g.text)]);
      seen.add(g.text);
    }
  return out;
}
/**
 * Where a connection was cut, what the broker wrote may not have been read: DUP 1 on a message the client never saw
 * is then allowed. A message it did see and did not acknowledge must come again with DUP 1.
 */
const dupIfSeen = (conns: Array<{ got: Array<{ text: string; dup: boolean }> }>) =>
  dupFlags(conns).map(([text, dup, before]) => [text, before || dup, before]);

async function registerApp(kms: TestSystem['kms'], appId: string): Promise<AppId> {
  const sm2 = sm2KeyPair();
  const { client_secret } = await kms.admin.registerApp(appId, {
    publish: ['devices/+/down/#', `apps/${appId}/out`],
    subscribe: ['devices/+/up/#'],
    sm2_public_key: sm2.publicKey,
  });
  return { appId, secret: client_secret, sm2 };
}

/** A device that publishes telemetry (sealed uplink) on devices/<id>/up/<sub>. */
async function telemetry(s: TestSystem, id: string) {
  const chip = await s.device(id, 32);
  const dev = await s.connectDevice(chip);
  return {
    dev,
    send: async (text: string, qos: 0 | 1 | 2 = 1, sub = 't') => {
      const topic = `devices/${id}/up/${sub}`;
      await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), { qos });
    },
  };
}

/** A persistent session of `id` subscribed to `filter` at `qos` and gone: what is published next is stored for it. */
async function awayApp(url: string, kmsUrl: string, id: AppId, filter: string, qos: 1 | 2 = 1, brokerId?: string) {
  const a = await App.connect(url, kmsUrl, id, { ...(brokerId && { brokerId }) });
  await a.rotate();
  await a.raw.subscribe(filter, qos);
  await a.raw.disconnect();
}

/** The store of a broker (Aedes' persistence, as the plugin wrapped it), for a test to slow one of its calls. */
function storeOf(b: RunningBroker): Record<string, unknown> {
  return (b.aedes as unknown as { persistence: Record<string, unknown> }).persistence;
}

/** Replaces `store[name]` with `wrap(original)` (bound to `store`) until the returned function is called. */
function intercept<F extends (...a: never[]) => unknown>(
  store: Record<string, unknown>,
  name: string,
  wrap: (f: F) => F,
) {
  const original = store[name] as F;
  store[name] = wrap((original as unknown as { bind(t: unknown): F }).bind(store));
  return () => void (store[name] = original);
}

/** One command as a device opened it, and how it came. */
interface Cmd {
  text: string;
  dup: boolean;
  messageId: number;
  keyIndex: number;
}

/**
 * A device connection (raw MQTT, persistent session unless told), its commands opened by its chip; it acknowledges
 * the first `ackFirst` commands of this connection (all by default).
 */
class Dev {
  readonly got: Cmd[] = [];
  ackFirst = Infinity;
  onGot: (c: Cmd) => void = () => undefined;
  refused = 0;
  private constructor(
    readonly raw: Raw,
    readonly chip: SecurityChip,
  ) {}

  static async connect(
    s: TestSystem,
    chip: SecurityChip,
    o: { url?: string; clean?: boolean; subscribe?: 1 | 2; setup?: (d: Dev) => void; token?: string } = {},
  ): Promise<Dev> {
    chip.beginSession();
    const token = o.token ?? (await s.deviceToken(chip));
    let dev: Dev | undefined;
    const { returnCode } = await Raw.connect(
      o.url ?? s.mqttUrl,
      { clientId: chip.deviceId, username: chip.deviceId, password: token, clean: o.clean ?? false },
      (raw) => {
        dev = new Dev(raw, chip);
        raw.on = (p) => dev!.receive(p);
        o.setup?.(dev);
      },
    );
    expect(returnCode).toBe(0);
    if (o.subscribe) await dev!.raw.subscribe(`devices/${chip.deviceId}/down/#`, o.subscribe);
    return dev!;
  }

  private receive(p: Packet): void {
    if (p.cmd === 'pubrel') this.raw.send({ cmd: 'pubcomp', messageId: p.messageId! });
    if (p.cmd !== 'publish') return;
    const pub = p as Publish;
    try {
      const text = Buffer.from(this.chip.openDownlink(pub.payload, pub.topic)).toString();
      const c = { text, dup: pub.dup, messageId: pub.messageId!, keyIndex: parseEnvelope(pub.payload).keyIndex };
      this.got.push(c);
      if (this.got.length <= this.ackFirst)
        this.raw.send({ cmd: pub.qos === 2 ? 'pubrec' : 'puback', messageId: pub.messageId! });
      this.onGot(c);
    } catch {
      this.refused++;
    }
  }

  texts(): string[] {
    return this.got.map((c) => c.text);
  }
}

/** Texts across connections in order of first arrival, each once, whatever the DUP flag of a repeat. */
function everyOnce(...conns: Array<{ got: Array<{ text: string }> }>): string[] {
  return [...new Set(conns.flatMap((c) => c.got.map((g) => g.text)))];
}

/** Commands across a device's connections, in order, MQTT-permitted redeliveries (DUP 1 of one seen) left out. */
function firstSeen(...conns: Dev[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const c of conns)
    for (const g of c.got) {
      if (seen.has(g.text) && g.dup) continue;
      seen.add(g.text);
      out.push(g.text);
    }
  return out;
}

async function startNode(
  kmsUrl: string,
  brokerId: string,
  secret: string,
  overrides: BrokerOverrides,
  lines: string[],
) {
  const logger = pino({ level: 'info' }, new Writable({ write: (c, _e, cb) => (lines.push(c.toString()), cb()) }));
  return startBroker(
    loadBrokerConfig(
      {
        mqtt: { port: 0 },
        http: { port: 0 },
        kmsUrl,
        brokerId,
        brokerSecret: secret,
        revocationPollMs: 200,
        ...overrides,
      },
      { env: {} },
    ),
    { logger },
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Devices (docs/PROTOCOL.md §9.2, §19): a persistent session's queued commands are sealed under the key of the
// connection that sends them; that key is claimed before CONNACK when something is queued.
// ---------------------------------------------------------------------------------------------------------------
describe.each(['memory', 'sqlite'] as const)('device persistent sessions, %s store', (persistence) => {
  let sys: TestSystem;
  let app: MqttClient;
  const data = tempDir('qkey-sq-dev-');
  beforeAll(async () => {
    sys = await startTestSystem({
      persistence,
      dataDir: data,
      rotation: { messages: 4, bytes: 1 << 20, seconds: 3600 },
      maxDownlinkClaimsPerMinute: 1000,
    });
    app = await sys.connectApp(`sq-cmd-${persistence}`, { publish: ['devices/+/down/#'] });
  });
  afterAll(async () => {
    await sys.stop();
    removeDir(data);
  });
  const cmd = (chip: SecurityChip, text: string, qos: 1 | 2 = 1) =>
    app.publishAsync(`devices/${chip.deviceId}/down/cmd`, text, { qos });

  /** Slows the store's answer to Aedes' fetchSubs for `deviceId` once, running `during` meanwhile. */
  const duringConnect = (deviceId: string, during: () => Promise<void>) => {
    let ran = false;
    const restore = intercept<(c: { id: string }) => Promise<unknown>>(
      storeOf(sys.broker),
      'subscriptionsByClient',
      (f) => async (c) => {
        if (c.id === deviceId && !ran) {
          ran = true;
          await during();
        }
        return f(c);
      },
    );
    return { restore, ran: () => ran };
  };

  /**
   * authenticate (broker/hooks/connect.ts, keyForQueuedCommands) claims the session's first downlink key
   * before CONNACK only if the store holds something for it when it looks (hasQueued). Aedes reads the queue again
   * later, in its connect handler's last step (emptyQueue), after fetchSubs, restoreSubs, storeWill, registerClient
   * and CONNACK: a command stored in between goes to authorizeForward with no key (session-keys.ts sealDownlink
   * returns undefined) unless the queue read waits for the key (broker/hooks/device-queue.ts); without that it is
   * counted dropped_no_key and Aedes clears it from the store (emptyQueueFilter). Here the
   * store is slow to answer fetchSubs (as a busy SQLite or a Redis round trip is) and the command comes meanwhile.
   */
  it('a command queued while the CONNECT of a session with nothing queued is under way arrives, sealed', async () => {
    const chip = await sys.device(`sq-window-${persistence}`, 4, 8);
    const away = await Dev.connect(sys, chip, { subscribe: 1 });
    await away.raw.disconnect();
    const dropped = await metricOf(sys, DROPPED);
    const slow = duringConnect(chip.deviceId, () => cmd(chip, 'queued during CONNECT').then(() => undefined));
    let first: Dev;
    try {
      first = await Dev.connect(sys, chip);
    } finally {
      slow.restore();
    }
    expect(slow.ran()).toBe(true);
    await until(() => first.got.length > 0, 'the command', 1000).catch(() => undefined);
    await first.raw.disconnect();
    const second = await Dev.connect(sys, chip);
    await until(() => second.got.length > 0, 'the command on the next connection', 1000).catch(() => undefined);
    const counted = (await metricOf(sys, DROPPED)) - dropped;
    await second.raw.disconnect();
    // Nothing queued for a persistent session is lost: it arrives on this connection (or a later one).
    expect({ first: first.texts(), second: second.texts(), dropped_no_key: counted }).toEqual({
      first: ['queued during CONNECT'],
      second: [],
      dropped_no_key: 0,
    });
  });

  /**
   * The same window at a takeover (the usual way a device comes back after its network dropped): the old
   * connection is half-open (it reads and acknowledges nothing) and still holds the session, so it is sent the
   * command live; the new connection's CONNECT had found an empty queue and claimed no key, so the command it must
   * send again [MQTT-4.4.0-1] must wait for the key, not be dropped (dropped_no_key) and cleared from the store.
   */
  it('takeover: a command the old (half-open) connection was sent and never acknowledged comes again on the new one', async () => {
    const chip = await sys.device(`sq-half-${persistence}`, 4, 8);
    const old = await Dev.connect(sys, chip, { subscribe: 1 });
    await cmd(chip, 'before');
    await until(() => old.got.length === 1, 'the first command');
    old.raw.socket.pause(); // half-open from here on
    const sent = () => old.raw.socket.readableLength > 0;
    const slow = duringConnect(chip.deviceId, async () => {
      await cmd(chip, 'during takeover');
      await until(sent, 'the live delivery to the old connection', 1000).catch(() => undefined);
    });
    let next: Dev;
    try {
      next = await Dev.connect(sys, chip);
    } finally {
      slow.restore();
    }
    expect(sent()).toBe(true); // the broker wrote it to the old connection
    await until(() => next.got.length > 0, 'the redelivery', 1000).catch(() => undefined);
    await next.raw.disconnect();
    const last = await Dev.connect(sys, chip);
    await pause(300);
    await last.raw.disconnect();
    expect([...next.got, ...last.got].map((c) => [c.text, c.dup])).toEqual([['during takeover', true]]);
  });

  // Eight connections in a row, each cut (reset) after its third command, that one unacknowledged, over a queue
  // spanning several downlink keys (rotation after 4 messages): what each connection is sent is sealed under its
  // own keys only (a key serves one session, §17), every command arrives, in order, and what was seen and not
  // acknowledged comes again with DUP 1 (§19).
  it('many reconnects in a row, each cut mid-queue: every command in order, redeliveries DUP 1, no key for two sessions', async () => {
    const chip = await sys.device(`sq-storm-${persistence}`, 4, 64);
    const setup = await Dev.connect(sys, chip, { subscribe: 1 });
    await setup.raw.disconnect();
    const commands = range(30, 'c');
    for (const c of commands) await cmd(chip, c);
    const conns: Dev[] = [];
    for (let i = 0; i < 8; i++) {
      const d = await Dev.connect(sys, chip, {
        setup: (x) => {
          x.ackFirst = 2;
          x.onGot = () => x.got.length === 3 && x.raw.kill();
        },
      });
      conns.push(d);
      await Promise.race([d.raw.closed, pause(1500)]);
      if (d.raw.alive) d.raw.kill();
      await d.raw.closed;
    }
    const last = await Dev.connect(sys, chip);
    conns.push(last);
    await until(() => firstSeen(...conns).length >= commands.length, 'every command', 5000).catch(() => undefined);
    await pause(200);
    await last.raw.disconnect();
    expect(firstSeen(...conns)).toEqual(commands);
    expect(dupFlags(conns)).toEqual(dupIfSeen(conns));
    const owner = new Map<number, number>();
    conns.forEach((c, i) => c.got.forEach((g) => owner.set(g.keyIndex, owner.get(g.keyIndex) ?? i)));
    conns.forEach((c, i) =>
      c.got.forEach((g) =>
        expect({ key: g.keyIndex, conn: owner.get(g.keyIndex) }).toEqual({ key: g.keyIndex, conn: i }),
      ),
    );
    for (const c of conns) expect(c.refused).toBe(0);
  });

  // The new connection's first downlink key is slow to come (the key service busy) while the old connection, gone
  // half-open, is still being sent the queue. Then the takeover: every command arrives, in order.
  it('takeover mid-queue while the new connection waits for its downlink key: none lost, in order', async () => {
    const chip = await sys.device(`sq-slowkey-${persistence}`, 4, 32);
    const setup = await Dev.connect(sys, chip, { subscribe: 1 });
    await setup.raw.disconnect();
    const commands = range(24, 'k');
    for (const c of commands) await cmd(chip, c);
    const keys = (sys.broker.plugin as unknown as { ctx: { keys: Record<string, unknown> } }).ctx.keys;
    const a = await Dev.connect(sys, chip, { setup: (d) => (d.ackFirst = 6) });
    await until(() => a.got.length >= 6, 'the first commands');
    a.raw.socket.pause();
    let claimed = false;
    const restore = intercept<(id: string, n: number, s?: string) => Promise<unknown>>(
      keys,
      'encKeys',
      (f) => async (id, n, s) => {
        if (id === chip.deviceId && !claimed) {
          claimed = true;
          await pause(400);
        }
        return f(id, n, s);
      },
    );
    let b: Dev;
    try {
      b = await Dev.connect(sys, chip);
    } finally {
      restore();
    }
    await until(() => firstSeen(a, b).length >= commands.length, 'every command', 5000).catch(() => undefined);
    await pause(200);
    await b.raw.disconnect();
    expect(claimed).toBe(true);
    expect(firstSeen(a, b)).toEqual(commands);
    expect(dupFlags([a, b])).toEqual(dupIfSeen([a, b]));
  });

  /**
   * A hole in the memory store (Aedes' own, aedes-persistence 11 asyncPersistence.outgoingUpdate; plain Aedes does
   * the same): a PUBREL entry has no brokerId/brokerCounter, so the PUBREC of a second QoS 2 message matches the
   * first message's PUBREL entry (undefined === undefined) and rewrites its packet identifier, leaving the second
   * message stored as a PUBLISH. After both flows completed (PUBREC, PUBREL, PUBCOMP) the second message is still
   * queued, and is sent again on the next connection: a QoS 2 command delivered twice, the second time as a new
   * one for a device that completed it [MQTT-4.3.3]. The SQLite store (broker/persistence/sqlite.ts) passes.
   * Skipped on the memory store: a hole upstream, in Aedes' memory store (docs/ARCHITECTURE.md, Persistence).
   */
  (persistence === 'memory' ? it.skip : it)(
    'QoS 2 commands completed on one connection are not sent again on the next',
    async () => {
      const chip = await sys.device(`sq-q2dev-${persistence}`, 4, 8);
      const a = await Dev.connect(sys, chip, { subscribe: 2 });
      for (const c of ['open', 'close', 'open again']) await cmd(chip, c, 2);
      await until(() => a.got.length >= 3, 'the three');
      await until(() => a.raw.packets.filter((p) => p.cmd === 'pubrel').length >= 3, 'the three PUBRELs');
      await pause(200); // the PUBCOMPs
      await a.raw.disconnect();
      const b = await Dev.connect(sys, chip);
      await pause(500);
      await b.raw.disconnect();
      expect(a.texts()).toEqual(['open', 'close', 'open again']);
      expect(b.raw.packets.filter((p) => p.cmd === 'publish' || p.cmd === 'pubrel').map((p) => p.cmd)).toEqual([]);
    },
  );
});

// ---------------------------------------------------------------------------------------------------------------
// Applications holding session keys (docs/PROTOCOL.md §22.6, §22.8), in-memory store.
// ---------------------------------------------------------------------------------------------------------------
describe('application persistent sessions, memory store (8 envelopes or 1 MiB per key)', () => {
  const LIMIT = 8;
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ rotation: { messages: LIMIT, bytes: 1 << 20, seconds: 3600 }, appHoldSeconds: 2 });
    await sealTelemetryForApps(sys, 200);
  });
  afterAll(() => sys.stop());

  /**
   * A stored message that the reader let through while the key could still seal it, and that the app's own publish
   * used up before the seal, is deferred (broker/hooks/app-hold.ts) with the packet identifier Aedes' emptyQueue gave
   * it (outgoingUpdate runs before the forward hook), though it never went on the wire. When the connection ends
   * before the next announcement, it stays stored with that identifier, and the next connection sends it with DUP 1
   * (broker/redelivery.ts marks every stored PUBLISH that has one). docs/PROTOCOL.md §22.8 says so; a DUP 0 here
   * would need the store to forget an identifier. Skipped: it states what is not promised. (The store is slowed,
   * 40 ms an update, to place the publish between the look and the seal.)
   */
  it.skip('a stored message deferred for want of key, then the connection ends: sent later with DUP 0, as a first delivery', async () => {
    const id = await registerApp(sys.kms, 'sq-defer');
    await awayApp(sys.mqttUrl, sys.kms.url, id, 'devices/sq-dev-defer/up/#');
    const { send, dev } = await telemetry(sys, 'sq-dev-defer');
    const stored = range(12, 'm');
    for (const t of stored) await send(t);
    const restore = intercept<(c: { id: string }, p: object) => Promise<unknown>>(
      storeOf(sys.broker),
      'outgoingUpdate',
      (f) => async (c, p) => {
        if (c.id === 'sq-defer/s') await pause(40);
        return f(c, p);
      },
    );
    let a: App;
    try {
      a = await App.connect(sys.mqttUrl, sys.kms.url, id, {
        setup: (x) => {
          x.autoRotate = false; // it does not rotate: the connection ends before a next key
          // The 7th stored message opened: the reader is sending the 8th, which the key can still seal...
          x.onGot = () => {
            if (x.got.length === 7) void x.raw.publish('apps/sq-defer/out', x.seal('apps/sq-defer/out', 'hello'));
          };
        },
      });
      await a.rotate();
      await until(() => a.got.length >= 7, 'the first seven');
      await pause(500);
    } finally {
      restore();
    }
    await a.raw.disconnect();
    const b = await App.connect(sys.mqttUrl, sys.kms.url, id);
    await b.rotate();
    await until(() => deduped(a, b).length >= stored.length, 'the rest', 3000).catch(() => undefined);
    await pause(200);
    await b.raw.disconnect();
    expect(deduped(a, b)).toEqual(stored);
    expect(a.wire.length).toBe(7); // 'm7' never went on the first connection's wire (a clean DISCONNECT: all read)
    expect(b.got.map((g) => [g.text, g.dup])).toEqual(stored.slice(7).map((t) => [t, false]));
    await dev.endAsync();
  });

  /**
   * A hole, not fixed (ordering), skipped: stored messages too large for what the key has left (bytes) wait for the next key; the app
   * does not rotate in time and the hold expires: the stored ones stay stored for a later connection, as §22.8 says,
   * but the live messages held behind them, small enough for the old key, go out on this connection ahead of them,
   * on the same topic. Order is not kept [MQTT-4.6.0-6]: the app gets l0, l1 before s4, s5 (broker/hooks/app-hold.ts:
   * at expiry, storedQueue skips what needs a key and flush() then delivers whatever the key can still seal).
   */
  it.skip('a hold that expires: live messages do not overtake the stored ones on the same topic', async () => {
    const id = await registerApp(sys.kms, 'sq-expire');
    await awayApp(sys.mqttUrl, sys.kms.url, id, 'devices/sq-dev-expire/up/#');
    const { send, dev } = await telemetry(sys, 'sq-dev-expire');
    const fat = 'f'.repeat(240_000); // four fit in one key's 1 MiB, not five
    const stored = range(6, 's');
    for (const t of stored) await send(`${t}:${fat}`);
    const a = await App.connect(sys.mqttUrl, sys.kms.url, id);
    a.autoRotate = false; // slow to rotate: the hold expires (appHoldSeconds 2)
    await a.rotate();
    await until(() => a.got.length >= 4, 'what the first key seals');
    await send('l0');
    await send('l1');
    await until(() => /"client":"sq-expire\/s".*"outcome":"expired"/.test(sys.logs()), 'the expiry', 4000);
    await pause(300);
    await a.raw.disconnect();
    const b = await App.connect(sys.mqttUrl, sys.kms.url, id);
    await b.rotate();
    await until(() => deduped(a, b).length >= 8, 'the rest', 3000).catch(() => undefined);
    await pause(200);
    await b.raw.disconnect();
    const short = (c: App) => c.got.map((g) => g.text.split(':')[0]);
    // Every message arrives, sealed (s4 and s5 on the next connection, §22.8), but not in order: l0 and l1 came first.
    expect(deduped(a, b).length).toBe(8);
    expect({ a: short(a), b: short(b) }).toEqual({ a: ['s0', 's1', 's2', 's3'], b: ['s4', 's5', 'l0', 'l1'] });
    await dev.endAsync();
  });

  // The announcement's claim at the key service is slow (400 ms); the connection dies while it is under way, and a
  // new connection takes the session over meanwhile. The old connection installs nothing (it closed); the new one
  // gets the whole queue, each message once, DUP 0 (none was sent before), none plaintext.
  it('the connection dies during its announcement’s key claim, and a takeover comes meanwhile: the whole queue, DUP 0', async () => {
    const id = await registerApp(sys.kms, 'sq-claim');
    await awayApp(sys.mqttUrl, sys.kms.url, id, 'devices/sq-dev-claim/up/#');
    const { send, dev } = await telemetry(sys, 'sq-dev-claim');
    const stored = range(20, 'c');
    for (const t of stored) await send(t);
    const kms = (sys.broker.plugin as unknown as { ctx: { o: { kms: Record<string, unknown> } } }).ctx.o.kms;
    let slowed = 0;
    const restore = intercept<(m: string, path: string, body?: unknown) => Promise<unknown>>(
      kms,
      'request',
      (f) => async (m, path, body) => {
        if (path.includes('/apps/sq-claim/dec_keys') && slowed++ === 0) await pause(400);
        return f(m, path, body);
      },
    );
    try {
      const a = await App.connect(sys.mqttUrl, sys.kms.url, id);
      const { keyId, key } = await a.issue();
      const announced = a.announce(0, keyId, key).then(
        () => 'acknowledged',
        () => 'closed',
      );
      await pause(100); // the claim is under way
      a.raw.kill();
      const b = await App.connect(sys.mqttUrl, sys.kms.url, id);
      expect(await announced).toBe('closed');
      await b.rotate();
      await until(() => b.got.length >= stored.length, 'the queue');
      await pause(300);
      expect(slowed).toBeGreaterThan(1);
      expect(a.wire).toEqual([]);
      expect(b.got.map((g) => [g.text, g.dup])).toEqual(stored.map((t) => [t, false]));
      b.expectAllSealed(stored);
      b.expectGenerationsWithin(LIMIT);
      await b.raw.disconnect();
    } finally {
      restore();
      await dev.endAsync();
    }
  });

  // An app that stops reading its socket (for less than appHoldSeconds) while its stored queue of 3.6 MB is sent:
  // the broker's writes wait for it, and its connect handler does not finish. Another app's live deliveries are not
  // held up meanwhile; once it reads again it gets the rest of its queue over several keys, then the live ones, in
  // order, on this connection.
  it('an app that stops reading while its queue is sent holds up no one, and gets everything once it reads', async () => {
    const id = await registerApp(sys.kms, 'sq-slow');
    const other = await registerApp(sys.kms, 'sq-other');
    await awayApp(sys.mqttUrl, sys.kms.url, id, 'devices/sq-dev-slow/up/#');
    const { send, dev } = await telemetry(sys, 'sq-dev-slow');
    const fat = 'z'.repeat(120_000);
    const stored = range(30, 's');
    for (const t of stored) await send(`${t}:${fat}`);
    const o = await App.connect(sys.mqttUrl, sys.kms.url, other, { clean: true });
    await o.rotate();
    await o.raw.subscribe('devices/sq-dev-slow/up/#', 1);
    const slow = await App.connect(sys.mqttUrl, sys.kms.url, id);
    const { keyId, key } = await slow.issue();
    void slow.announce(0, keyId, key).catch(() => undefined);
    slow.raw.socket.pause();
    const live = range(4, 'l');
    for (const t of live) await send(t);
    await until(() => o.got.length >= live.length, 'the other app’s deliveries', 1000);
    expect(o.texts()).toEqual(live);
    await pause(300);
    slow.raw.socket.resume();
    await until(() => slow.got.length >= stored.length + live.length, 'the slow app’s queue', 8000).catch(
      () => undefined,
    );
    await pause(200);
    expect(slow.got.map((g) => g.text.split(':')[0])).toEqual([...stored, ...live]);
    expect(slow.refused).toBe(0);
    slow.expectAllSealed(['zzzzzzzzzzzzzzzz', ...live]);
    slow.expectGenerationsWithin(LIMIT);
    await slow.raw.disconnect();
    await o.raw.disconnect();
    await dev.endAsync();
  });
});

// ---------------------------------------------------------------------------------------------------------------
// QoS 2 flows in a persistent application's stored queue, in-memory and SQLite stores.
// ---------------------------------------------------------------------------------------------------------------
describe.each(['memory', 'sqlite'] as const)('QoS 2 in an application’s stored queue, %s store', (persistence) => {
  let sys: TestSystem;
  const data = tempDir('qkey-sq-q2-');
  beforeAll(async () => {
    sys = await startTestSystem({
      persistence,
      dataDir: data,
      rotation: { messages: 8, bytes: 1 << 20, seconds: 3600 },
      appHoldSeconds: 3,
    });
    await sealTelemetryForApps(sys, 40);
  });
  afterAll(async () => {
    await sys.stop();
    removeDir(data);
  });

  // The app received q0..q3 at QoS 2 and answered PUBREC to q0 and q2 only, and PUBCOMP to nothing: its stored queue
  // is PUBREL(q0), PUBLISH(q1), PUBREL(q2), PUBLISH(q3), then w0, w1 queued while it was away. A PUBREL needs no key:
  // the first goes out before the announcement; the PUBLISHes wait for the key and come sealed, in order, q1 and q3
  // with DUP 1 and their identifiers [MQTT-4.4.0-1], each PUBREL with its own identifier [MQTT-4.3.3]. (On the memory
  // store the PUBREC of q2 rewrites q0's PUBREL entry instead of q2's: see the device QoS 2 test above.)
  // Skipped on the memory store: the same upstream hole as the device QoS 2 test above.
  (persistence === 'memory' ? it.skip : it)(
    'PUBRELs go out while the hold waits; the publishes come sealed after the key, in order, each PUBREL once',
    async () => {
      const id = await registerApp(sys.kms, `sq-q2-${persistence}`);
      const filter = `devices/sq-dev-q2-${persistence}/up/#`;
      await awayApp(sys.mqttUrl, sys.kms.url, id, filter, 2);
      const { send, dev } = await telemetry(sys, `sq-dev-q2-${persistence}`);
      const a = await App.connect(sys.mqttUrl, sys.kms.url, id, {
        setup: (x) => {
          x.ack = (text) => text !== undefined && Number(text.slice(1)) % 2 === 0;
          x.complete = false;
        },
      });
      await a.rotate();
      for (const t of range(4, 'q')) await send(t, 2);
      await until(() => a.got.length >= 4, 'the four');
      await until(() => a.raw.packets.filter((p) => p.cmd === 'pubrel').length >= 2, 'the two PUBRELs');
      const released = a.raw.packets.filter((p) => p.cmd === 'pubrel').map((p) => p.messageId);
      const idOf = (t: string) => a.got.find((g) => g.text === t)!.messageId;
      expect(released).toEqual([idOf('q0'), idOf('q2')]);
      await a.raw.disconnect();
      for (const t of range(2, 'w')) await send(t, 2);

      const b = await App.connect(sys.mqttUrl, sys.kms.url, id);
      await until(() => b.raw.packets.some((p) => p.cmd === 'pubrel'), 'a PUBREL before the key', 1500).catch(
        () => undefined,
      );
      await pause(200);
      const before = b.raw.packets
        .filter((p) => p.cmd === 'pubrel' || p.cmd === 'publish')
        .map((p) => `${p.cmd} ${p.messageId}`);
      await b.rotate();
      await until(() => b.got.length >= 4, 'the publishes', 3000).catch(() => undefined);
      await pause(300);
      const rels = b.raw.packets.filter((p) => p.cmd === 'pubrel').map((p) => p.messageId);
      await b.raw.disconnect();
      const c = await App.connect(sys.mqttUrl, sys.kms.url, id);
      await pause(400);
      await c.raw.disconnect();
      expect({
        beforeTheKey: before,
        pubrels: rels,
        publishes: b.got.map((g) => [g.text, g.dup, g.qos, g.messageId]),
        later: c.raw.packets.filter((p) => p.cmd === 'publish' || p.cmd === 'pubrel').length,
      }).toEqual({
        beforeTheKey: [`pubrel ${released[0]}`],
        pubrels: [...released, ...b.got.map((g) => g.messageId)], // then those of b's own PUBRECs
        publishes: [
          ['q1', true, 2, idOf('q1')],
          ['q3', true, 2, idOf('q3')],
          ['w0', false, 2, expect.any(Number)],
          ['w1', false, 2, expect.any(Number)],
        ],
        later: 0,
      });
      b.expectAllSealed(['q1', 'q3', 'w0', 'w1']);
      await dev.endAsync();
    },
  );
});

// ---------------------------------------------------------------------------------------------------------------
// A stored queue spanning several keys on the SQLite store: killed mid-flow, then taken over mid-flow.
// ---------------------------------------------------------------------------------------------------------------
describe('application persistent sessions, SQLite store (8 envelopes per key)', () => {
  const LIMIT = 8;
  let sys: TestSystem;
  const data = tempDir('qkey-sq-app-');
  beforeAll(async () => {
    sys = await startTestSystem({
      persistence: 'sqlite',
      dataDir: data,
      rotation: { messages: LIMIT, bytes: 1 << 20, seconds: 3600 },
      appHoldSeconds: 3,
    });
    await sealTelemetryForApps(sys, 100);
  });
  afterAll(async () => {
    await sys.stop();
    removeDir(data);
  });

  // Retried: under heavy load a message written to the connection being taken over can also reach the new one as a
  // first delivery (DUP 0), the single-broker form of the takeover overlap skipped in the two-broker tests below.
  it(
    'killed mid-flow, then taken over mid-flow: every message once in order, DUP 1 only on redelivery, sealed',
    { retry: 2 },
    async () => {
      const id = await registerApp(sys.kms, 'sq-lite');
      await awayApp(sys.mqttUrl, sys.kms.url, id, 'devices/sq-dev-lite/up/#');
      const { send, dev } = await telemetry(sys, 'sq-dev-lite');
      const n = 40;
      const texts = range(n, 'x');
      for (const t of texts) await send(t);
      const a = await App.connect(sys.mqttUrl, sys.kms.url, id, {
        setup: (x) => (x.onGot = () => x.got.length === 5 && x.raw.kill()),
      });
      await a.rotate().catch(() => undefined);
      await a.raw.closed;
      const token = await App.token(sys.kms.url, id);
      let c: Promise<App> | undefined;
      const b = await App.connect(sys.mqttUrl, sys.kms.url, id, {
        setup: (x) =>
          (x.onGot = () => {
            if (x.got.length === 12) c = App.connect(sys.mqttUrl, sys.kms.url, id, { token });
          }),
      });
      await b.rotate().catch(() => undefined);
      await until(() => c !== undefined, 'the takeover');
      const third = await c!;
      await third.rotate();
      await until(() => deduped(a, b, third).length >= n, 'the whole queue', 5000).catch(() => undefined);
      await pause(300);
      await third.raw.disconnect();
      expect(deduped(a, b, third)).toEqual(texts);
      expect(dupFlags([a, b, third])).toEqual(dupIfSeen([a, b, third]));
      for (const x of [a, b, third]) {
        x.expectAllSealed(texts.filter((t) => t.length >= 8));
        x.expectGenerationsWithin(LIMIT);
        expect(x.refused).toBe(0);
      }
      await dev.endAsync();
    },
  );

  // Seven connections in a row, each killed (reset) on its fourth delivery opened, over a queue of five keys' worth:
  // each connection announces its own keys and rotates on the notices; every message arrives, in order, sealed,
  // no generation seals more than its limit, and DUP 1 marks what an earlier connection was sent.
  it('many reconnects in a row, each killed mid-queue: every message in order, sealed, within each key’s limit', async () => {
    const id = await registerApp(sys.kms, 'sq-lite-storm');
    await awayApp(sys.mqttUrl, sys.kms.url, id, 'devices/sq-dev-lite-storm/up/#');
    const { send, dev } = await telemetry(sys, 'sq-dev-lite-storm');
    const texts = range(40, 'y');
    for (const t of texts) await send(t);
    const conns: App[] = [];
    for (let i = 0; i < 7; i++) {
      const a = await App.connect(sys.mqttUrl, sys.kms.url, id, {
        setup: (x) =>
          (x.onGot = () => {
            if (x.got.length !== 4) return;
            x.autoRotate = false; // a notice read after the kill starts no handshake
            x.raw.kill();
          }),
      });
      conns.push(a);
      await a.rotate().catch(() => undefined);
      await Promise.race([a.raw.closed, pause(1500)]);
      if (a.raw.alive) a.raw.kill();
      await a.raw.closed;
    }
    const last = await App.connect(sys.mqttUrl, sys.kms.url, id);
    conns.push(last);
    await last.rotate();
    await until(() => everyOnce(...conns).length >= texts.length, 'the whole queue', 5000).catch(() => undefined);
    await pause(300);
    await last.raw.disconnect();
    expect(deduped(...conns)).toEqual(texts);
    expect(dupFlags(conns)).toEqual(dupIfSeen(conns));
    for (const x of conns) {
      x.expectGenerationsWithin(LIMIT);
      x.expectAllSealed([]);
      expect(x.refused).toBe(0);
    }
    await dev.endAsync();
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Two brokers over one Redis: a session continues on whichever broker it reaches next.
// ---------------------------------------------------------------------------------------------------------------
describe('two brokers over one Redis (8 envelopes per key)', () => {
  const LIMIT = 8;
  let redis: TestRedis;
  let sys: TestSystem;
  let b: RunningBroker;
  let urlB: string;
  const linesB: string[] = [];
  beforeAll(async () => {
    redis = await startRedis();
    const o = {
      rotation: { messages: LIMIT, bytes: 1 << 20, seconds: 3600 },
      appHoldSeconds: 3,
      maxDownlinkClaimsPerMinute: 1000,
      redis: redis.url,
    };
    const kms = await startTestKms();
    sys = await systemOn(kms, o);
    const { client_secret } = await kms.admin.registerBroker('sq-b');
    b = await startNode(kms.url, 'sq-b', client_secret, o, linesB);
    urlB = b.urls.mqtt!;
    await sealTelemetryForApps(sys, 200);
    await until(() => b.policy.current.version >= sys.broker.policy.current.version, 'the policy on broker B');
  }, 30_000);
  afterAll(async () => {
    await b?.close();
    await sys?.stop();
    await redis?.stop();
  });

  it('an app killed mid-flow on A, back on B, then taken over from A mid-flow: every message once in order, sealed', async () => {
    const id = await registerApp(sys.kms, 'sq-redis');
    await awayApp(sys.mqttUrl, sys.kms.url, id, 'devices/sq-dev-redis/up/#');
    const { send, dev } = await telemetry(sys, 'sq-dev-redis');
    const n = 40;
    const texts = range(n, 'r');
    for (const t of texts) await send(t);
    const a1 = await App.connect(sys.mqttUrl, sys.kms.url, id, {
      setup: (a) => (a.onGot = () => a.got.length === 5 && a.raw.kill()),
    });
    await a1.rotate().catch(() => undefined);
    await a1.raw.closed;
    await pause(200);
    const token = await App.token(sys.kms.url, id);
    let takeover: Promise<App> | undefined;
    const b2 = await App.connect(urlB, sys.kms.url, id, {
      brokerId: 'sq-b',
      setup: (a) =>
        (a.onGot = () => {
          if (a.got.length === 12) takeover = App.connect(sys.mqttUrl, sys.kms.url, id, { token });
        }),
    });
    await b2.rotate().catch(() => undefined);
    await until(() => takeover !== undefined, 'the takeover');
    const a3 = await takeover!;
    await a3.rotate();
    await until(() => deduped(a1, b2, a3).length >= n, 'the whole queue', 5000).catch(() => undefined);
    await pause(300);
    await a3.raw.disconnect();
    // Every message, in order of first arrival (a copy sent to both connections during the takeover's overlap is
    // the subject of the next test).
    expect(everyOnce(a1, b2, a3)).toEqual(texts);
    for (const x of [a1, b2, a3]) {
      x.expectAllSealed(texts.filter((t) => t.length >= 8));
      x.expectGenerationsWithin(LIMIT);
    }
    await dev.endAsync();
  });

  // The takeover of a session held on the other broker is not atomic: broker B closes its connection when Aedes'
  // $SYS new-client notice reaches it over Redis, while broker A already sends the queue it read. Here the notice
  // takes 150 ms to act on B (a busy Redis or network). A hole in Aedes' cross-broker takeover, not fixed, skipped: a
  // message both connections are sent in that overlap reaches the new connection as a first delivery, DUP 0, after
  // the old one was sent it [MQTT-3.3.1-1], and two connections of one client id are sent the queue at once
  // [MQTT-3.1.4-2].
  it.skip('a takeover from the other broker while the old connection is mid-queue: what it was sent comes again with DUP 1', async () => {
    const id = await registerApp(sys.kms, 'sq-overlap');
    await awayApp(urlB, sys.kms.url, id, 'devices/sq-dev-overlap/up/#', 1, 'sq-b');
    const { send, dev } = await telemetry(sys, 'sq-dev-overlap');
    const texts = range(24, 'o');
    for (const t of texts) await send(t);
    const token = await App.token(sys.kms.url, id);
    let takeover: Promise<App> | undefined;
    const old = await App.connect(urlB, sys.kms.url, id, {
      brokerId: 'sq-b',
      setup: (a) =>
        (a.onGot = () => {
          if (a.got.length !== 3) return;
          const held = (b.aedes as unknown as { clients: Record<string, { close(done?: () => void): void }> }).clients[
            'sq-overlap/s'
          ]!;
          const close = held.close.bind(held);
          held.close = (done) => void setTimeout(() => close(done), 150);
          takeover = App.connect(sys.mqttUrl, sys.kms.url, id, { token }).then(async (n) => (await n.rotate(), n));
        }),
    });
    await old.rotate();
    await until(() => takeover !== undefined, 'the takeover');
    const next = await takeover!;
    await until(() => everyOnce(old, next).length >= texts.length, 'the whole queue', 4000).catch(() => undefined);
    await pause(300);
    await next.raw.disconnect();
    expect(everyOnce(old, next)).toEqual(texts);
    const sentToOld = new Set(old.got.map((g) => g.text));
    // Every message the new connection is sent that the old one was sent too carries DUP 1.
    expect(next.got.filter((g) => sentToOld.has(g.text) && !g.dup).map((g) => g.text)).toEqual([]);
    await dev.endAsync();
  });

  it('D1 over Redis: a command published on A while a device’s CONNECT on B is under way arrives', async () => {
    const chip = await sys.device('sq-dev-d1r', 4, 16);
    const away = await Dev.connect(sys, chip, { subscribe: 1, url: urlB });
    await away.raw.disconnect();
    const app = await sys.connectApp('sq-d1r-cmd', { publish: ['devices/+/down/#'] });
    let ran = false;
    const restore = intercept<(c: { id: string }) => Promise<unknown>>(
      storeOf(b),
      'subscriptionsByClient',
      (f) => async (c) => {
        if (c.id === chip.deviceId && !ran) {
          ran = true;
          await app.publishAsync(`devices/${chip.deviceId}/down/cmd`, 'queued on A', { qos: 1 });
        }
        return f(c);
      },
    );
    let d: Dev;
    try {
      d = await Dev.connect(sys, chip, { url: urlB });
    } finally {
      restore();
    }
    await until(() => d.got.length > 0, 'the command', 1000).catch(() => undefined);
    await d.raw.disconnect();
    const again = await Dev.connect(sys, chip, { url: urlB });
    await pause(400);
    await again.raw.disconnect();
    expect(ran).toBe(true);
    expect([...d.texts(), ...again.texts()]).toEqual(['queued on A']);
    await app.endAsync();
  });
});

// ---------------------------------------------------------------------------------------------------------------
// One subscriber that stops reading its socket, and everyone else.
// ---------------------------------------------------------------------------------------------------------------
describe('a device that stops reading its socket (Aedes concurrency 16)', () => {
  let sys: TestSystem;
  beforeAll(async () => {
    sys = await startTestSystem({ concurrency: 16 });
  });
  afterAll(() => sys.stop());

  /**
   * A hole, not fixed (availability), skipped. Aedes' write() waits for 'drain' when a socket's buffer is full, for
   * up to its drainTimeout (60 s; broker/server.ts keeps Aedes' default), and each delivery keeps its slot of the
   * emitter's `concurrency` until its write callback. A persistent device that stops reading while commands keep coming fills every slot:
   * then no message reaches anyone on the broker, and other publishers' QoS 1 PUBACKs stop, until it reads again.
   * With the default concurrency (2,000) the same takes 2,000 deliveries stuck at once, e.g. an application that
   * subscribes to all devices' telemetry and stops reading.
   */
  it.skip('another device still gets its command within a second', async () => {
    const x = await sys.device('sq-stall-x', 4, 8);
    const y = await sys.device('sq-stall-y', 4, 8);
    const stuck = await Dev.connect(sys, x, { subscribe: 1 });
    stuck.raw.socket.pause();
    const ok = await Dev.connect(sys, y, { subscribe: 1, clean: true });
    const floods = [
      await sys.connectApp('sq-stall-flood', { publish: ['devices/+/down/#'] }),
      await sys.connectApp('sq-stall-flood2', { publish: ['devices/+/down/#'] }),
    ];
    const other = await sys.connectApp('sq-stall-other', { publish: ['devices/+/down/#'] });
    const big = 'x'.repeat(60_000);
    for (const flood of floods)
      for (let i = 0; i < 200; i++)
        void flood.publishAsync('devices/sq-stall-x/down/cmd', `${i}:${big}`, { qos: 1 }).catch(() => undefined);
    await pause(1500);
    const t0 = Date.now();
    void other.publishAsync('devices/sq-stall-y/down/cmd', 'for y', { qos: 1 }).catch(() => undefined);
    await until(() => ok.got.length > 0, 'the command for y', 1000).catch(() => undefined);
    const waited = ok.got.length > 0 ? Date.now() - t0 : -1;
    stuck.raw.socket.resume(); // let the broker go on, whatever happened
    await until(() => ok.got.length > 0, 'the command for y once x reads', 5000).catch(() => undefined);
    for (const flood of floods) await flood.endAsync(true);
    await other.endAsync(true);
    stuck.raw.kill();
    await ok.raw.disconnect();
    expect({ delivered: waited >= 0 }).toEqual({ delivered: true });
  });
});
