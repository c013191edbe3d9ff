// Attacks on what the broker delivers to an application holding a session key (docs/PROTOCOL.md §22.6, §22.8), on a
// real broker and key service with small rotation limits: stored queues that span several keys, kills and
// takeovers at the worst moment, stale and foreign announcements, fast rotation, hold bounds, QoS 0/1 and retained
// messages, a key that ages out mid-queue, and every payload on the app's wire inspected for plaintext.
//
// Where a test guards a particular mechanism, its comment names it.
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { followRotationNotices } from '../../common/rotation-notices.js';
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
import { startTestSystem, type TestSystem } from '../helpers/system.js';

const LIMIT = 16; // envelopes per application key, both directions
let sys: TestSystem;
const clients: MqttClient[] = [];
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const range = (n: number, prefix = '') => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

interface App {
  appId: string;
  secret: string;
  sm2: { privateKey: string; publicKey: string };
}

async function registerApp(s: TestSystem, appId: string): Promise<App> {
  const sm2 = sm2KeyPair();
  const { client_secret } = await s.kms.admin.registerApp(appId, {
    publish: ['devices/+/down/#'],
    subscribe: ['devices/+/up/#'],
    sm2_public_key: sm2.publicKey,
  });
  return { appId, secret: client_secret, sm2 };
}

/** One delivery as the app opened it: plaintext, its generation and seq, and the MQTT header. */
interface Got {
  topic: string;
  text: string;
  generation: number;
  seq: number;
  dup: boolean;
  qos: number;
  retain: boolean;
}

/**
 * An application connection under the test's full control (device-sim/app-session.ts does the same, with no hooks):
 * the key-service handshake, the announcement, deliveries opened under whichever generation sealed them, rotation
 * notices followed (or not), and every payload seen on the wire kept for inspection.
 */
class TestApp {
  readonly got: Got[] = [];
  /** Every PUBLISH the app's socket received except the session topic. */
  readonly wire: Array<{ topic: string; payload: Buffer; dup: boolean; qos: number }> = [];
  readonly notices: number[] = [];
  /** Deliveries that did not open under any held generation. */
  refused = 0;
  /** Newest generation announced and acknowledged; -1 before the first. */
  generation = -1;
  autoRotate = true;
  onGot: ((g: Got) => void) | undefined;
  private readonly keys = new Map<number, { key: EnvelopeKey; replay: ReplayWindow; nextSeq: number }>();
  private rotating: Promise<void> | undefined;
  private readonly kms: KmsClient;
  private readonly onNotice: (payload: Uint8Array) => void;

  private constructor(
    readonly s: TestSystem,
    readonly app: App,
    readonly client: MqttClient,
    token: string,
  ) {
    this.kms = new KmsClient(s.kms.url, { token });
    this.onNotice = followRotationNotices({
      current: () => Math.max(this.generation, ...this.keys.keys()),
      alive: () => this.client.connected && !this.client.disconnecting,
      rotate: () => this.rotate(),
      failed: () => undefined,
    });
    client.on('message', (topic, payload, packet) => this.receive(topic, payload, packet));
  }

  static async token(s: TestSystem, app: App): Promise<string> {
    return (await s.kms.anon.clientToken(app.appId, app.secret)).access_token;
  }

  /** Opens the MQTT connection at once (synchronously), with a token fetched before; `ready` is its CONNACK. */
  static open(s: TestSystem, app: App, clean: boolean, token: string, clientId = `${app.appId}/session`) {
    const client = mqtt.connect(s.mqttUrl, {
      clientId,
      username: app.appId,
      password: token,
      reconnectPeriod: 0,
      clean,
    });
    clients.push(client);
    const t = new TestApp(s, app, client, token);
    const ready = new Promise<void>((resolve, reject) => client.once('connect', () => resolve()).once('error', reject));
    return { t, ready };
  }

  static async connect(s: TestSystem, app: App, clean: boolean, clientId = `${app.appId}/session`) {
    const { t, ready } = TestApp.open(s, app, clean, await TestApp.token(s, app), clientId);
    await ready;
    return t;
  }

  /** Connects and announces generation 0. */
  static async start(s: TestSystem, app: App, clean: boolean, setup?: (t: TestApp) => void) {
    const t = await TestApp.connect(s, app, clean);
    setup?.(t);
    await t.rotate();
    return t;
  }

  /** A session key issued to this app for the test broker: its id and the key itself. */
  async issue(): Promise<{ keyId: string; key: Uint8Array }> {
    const c = await appSessionChallenge(this.kms, 'test-broker');
    const message = challengeMessage({
      appId: c.app_id,
      kmeId: c.kme_id,
      brokerId: c.broker_id,
      challenge: Buffer.from(c.challenge, 'base64'),
      expiresAt: c.expires_at,
    });
    const sig = signChallenge(message, this.app.sm2.privateKey, this.app.sm2.publicKey);
    const issued = await appSessionKey(this.kms, 'test-broker', c.challenge, Buffer.from(sig).toString('base64'));
    const key = unwrapSessionKey(Buffer.from(issued.wrapped_key, 'base64'), this.app.sm2.privateKey);
    if (!key) throw new Error('the session key did not unwrap');
    return { keyId: issued.key_ID, key };
  }

  /** Opens under `index` from now, and announces it (QoS 1: resolves on PUBACK, rejects if the broker closes). */
  async announce(index: number, keyId: string, key?: Uint8Array): Promise<void> {
    if (key) this.keys.set(index, { key: new EnvelopeKey(key), replay: new ReplayWindow(), nextSeq: 0 });
    await this.client.publishAsync(APP_SESSION_TOPIC, JSON.stringify({ key_ID: keyId, key_index: index }), { qos: 1 });
    if (index > this.generation) this.generation = index;
  }

  rotate(): Promise<void> {
    if (!this.autoRotate && this.generation >= 0) return Promise.resolve();
    return this.rotateNow();
  }

  rotateNow(): Promise<void> {
    this.rotating ??= (async () => {
      const { keyId, key } = await this.issue();
      await this.announce(Math.max(this.generation, ...this.keys.keys()) + 1, keyId, key);
    })().finally(() => (this.rotating = undefined));
    return this.rotating;
  }

  /** An app-up envelope under the newest announced generation, or under `generation`. */
  seal(topic: string, text: string, generation = this.generation): Buffer {
    const g = this.keys.get(generation)!;
    return Buffer.from(
      sealEnvelope(Buffer.from(text), {
        key: g.key,
        keyIndex: generation,
        seq: g.nextSeq++,
        deviceId: this.app.appId,
        topic,
        direction: 'app-up',
      }),
    );
  }

  private receive(topic: string, payload: Buffer, packet: { dup: boolean; qos: number; retain: boolean }) {
    if (topic === APP_SESSION_TOPIC) {
      const n = parseRotationNotice(payload);
      if (n !== undefined) this.notices.push(n);
      if (this.autoRotate) this.onNotice(payload);
      return;
    }
    this.wire.push({ topic, payload: Buffer.from(payload), dup: packet.dup, qos: packet.qos });
    if (payload.length === 0) return;
    try {
      const parsed = parseEnvelope(payload);
      const g = this.keys.get(parsed.keyIndex);
      if (!g) throw new Error('unknown generation');
      const { payload: plain } = openEnvelope(parsed, {
        key: g.key,
        deviceId: this.app.appId,
        topic,
        direction: 'app-down',
        replay: g.replay,
      });
      const got = {
        topic,
        text: Buffer.from(plain).toString(),
        generation: parsed.keyIndex,
        seq: parsed.seq,
        dup: packet.dup,
        qos: packet.qos,
        retain: packet.retain,
      };
      this.got.push(got);
      this.onGot?.(got);
    } catch {
      this.refused++;
    }
  }

  texts(): string[] {
    return this.got.map((g) => g.text);
  }

  /**
   * No payload on the wire was anything but an envelope, and none carried one of `texts` in the clear: none is one
   * of them, and none contains one of 8 characters or more (a shorter one turns up in random ciphertext by chance).
   */
  expectAllSealed(texts: string[]) {
    for (const { payload } of this.wire) {
      if (payload.length === 0) continue;
      expect(() => parseEnvelope(payload)).not.toThrow();
      for (const t of texts) {
        const clear = Buffer.from(t);
        expect(payload.equals(clear) || (clear.length >= 8 && payload.includes(clear))).toBe(false);
      }
    }
  }

  kill() {
    this.client.stream.destroy();
  }
}

async function device(s: TestSystem, id: string) {
  const chip = await s.device(id, 32);
  const dev = await s.connectDevice(chip);
  clients.push(dev);
  return {
    chip,
    dev,
    send: async (text: string, opts: { qos?: 0 | 1; retain?: boolean; sub?: string } = {}) => {
      const topic = `devices/${id}/up/${opts.sub ?? 't'}`;
      await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(text), topic)), {
        qos: opts.qos ?? 1,
        retain: opts.retain ?? false,
      });
    },
  };
}

async function until(ok: () => boolean, what: string, ms = 8000): Promise<void> {
  for (const end = Date.now() + ms; !ok();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await pause(20);
  }
}

async function metric(s: TestSystem, name: string): Promise<number> {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await s.broker.registry.metrics());
  return Number(m?.[1] ?? 0);
}
const DROPPED = 'broker_downlink_total\\{outcome="dropped_no_key"\\}';

function perGeneration(got: Got[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const g of got) m.set(g.generation, (m.get(g.generation) ?? 0) + 1);
  return m;
}

/** A persistent session of `app` subscribed to `filter` and gone: what is published next is stored for it. */
async function persistentAway(s: TestSystem, app: App, filter: string) {
  const first = await TestApp.start(s, app, false);
  await first.client.subscribeAsync(filter, { qos: 1 });
  await first.client.endAsync();
}

beforeAll(async () => {
  sys = await startTestSystem({
    rotation: { messages: LIMIT, bytes: 64 * 1024, seconds: 3600 },
    appHoldSeconds: 3,
  });
  await sealTelemetryForApps(sys, 400);
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
  await sys.stop();
});

/**
 * What the app received across its connections, in order, with MQTT-permitted redeliveries (DUP 1 of a message
 * already seen) taken out: must be exactly `expected`. A non-DUP repeat is a duplicate the broker may not send.
 */
function deduped(...conns: Array<TestApp | undefined>): string[] {
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

function expectEachGenerationWithin(conn: TestApp, limit = LIMIT) {
  for (const [gen, n] of perGeneration(conn.got)) expect({ gen, n: Math.min(n, limit) }).toEqual({ gen, n });
}

describe('a stored queue spanning several keys, cut at the worst moment', () => {
  // Aedes' queue pipeline runs on after the connection dies: the forward hook refuses what it still reads (the
  // client's state is released), and Aedes clears what the hook refuses unless the store leaves a closed client's
  // queue alone (broker/closed-session-queue.ts).
  it('killed mid-flow: every stored message arrives on this connection or the next, in order, none lost', async () => {
    const app = await registerApp(sys, 'att-kill-flow');
    await persistentAway(sys, app, 'devices/dev-kill-flow/up/#');
    const { send, dev } = await device(sys, 'dev-kill-flow');
    const n = 60;
    for (const t of range(n, 'k')) await send(t);
    await dev.endAsync();

    // Reconnects, and dies the moment the queue is flowing: on the fifth message opened.
    let a: TestApp | undefined;
    await TestApp.start(sys, app, false, (t) => {
      a = t;
      t.onGot = () => t.got.length === 5 && t.kill();
    }).catch(() => undefined);
    await until(() => a!.client.disconnected || !a!.client.connected, 'the kill');
    await pause(300);

    const b = await TestApp.start(sys, app, false);
    await until(() => deduped(a, b).length >= n, 'the rest of the queue', 3000).catch(() => undefined);
    expect(deduped(a, b)).toEqual(range(n, 'k'));
    expectEachGenerationWithin(b);
    b.expectAllSealed(range(n, 'k'));
  });

  // The first connection's queue pipeline runs on after the takeover closed it; were it to clear what it read, the
  // new connection's queue read (a snapshot of the same store) would fail on those ('no such packet') and the
  // broker would close the new connection too (broker/closed-session-queue.ts).
  it('taken over mid-flow by a second connection with the same client id: none lost, none plaintext', async () => {
    const app = await registerApp(sys, 'att-take-flow');
    await persistentAway(sys, app, 'devices/dev-take-flow/up/#');
    const { send, dev } = await device(sys, 'dev-take-flow');
    const n = 60;
    for (const t of range(n, 'm')) await send(t);
    await dev.endAsync();

    const token = await TestApp.token(sys, app);
    let b: { t: TestApp; ready: Promise<void> } | undefined;
    let a: TestApp | undefined;
    await TestApp.start(sys, app, false, (t) => {
      a = t;
      // The takeover's CONNECT leaves the moment the fifth message is opened.
      t.onGot = () => {
        if (t.got.length === 5) b = TestApp.open(sys, app, false, token);
      };
    }).catch(() => undefined);
    await until(() => b !== undefined, 'the takeover');
    await b!.ready;
    await b!.t.rotate().catch(() => undefined);
    const complete = () => deduped(a, b!.t).length >= n;
    await until(() => complete() || !b!.t.client.connected, 'the rest of the queue', 3000).catch(() => undefined);
    const bAlive = b!.t.client.connected;
    // Whatever became of the second connection, a third one gets what is still stored.
    const c = complete() ? undefined : await TestApp.start(sys, app, false);
    if (c) await until(() => deduped(a, b!.t, c).length >= n, 'the rest, on a third connection', 4000).catch(() => 0);
    expect(deduped(a, b!.t, c)).toEqual(range(n, 'm'));
    expect(bAlive).toBe(true);
    for (const x of [a!, b!.t, c]) x?.expectAllSealed(range(n, 'm'));
  });

  it('taken over while the queue is held for the first key: the old connection gets nothing, the new one all', async () => {
    const app = await registerApp(sys, 'att-take-held');
    await persistentAway(sys, app, 'devices/dev-take-held/up/#');
    const { send, dev } = await device(sys, 'dev-take-held');
    for (const t of range(20, 'h')) await send(t);
    const a = await TestApp.connect(sys, app, false); // never announces
    await send('live-a'); // held for a's key
    await pause(200);
    const b = await TestApp.connect(sys, app, false);
    await send('live-b');
    await until(() => !a.client.connected, 'the takeover to close the first connection');
    await b.rotate();
    const texts = [...range(20, 'h'), 'live-a', 'live-b'];
    await until(() => b.got.length >= texts.length, 'the queue on the new connection');
    await pause(200);
    expect(a.wire).toEqual([]);
    expect(b.texts()).toEqual(texts);
    expect(b.got.every((g) => !g.dup)).toBe(true); // nothing had been sent before
    expectEachGenerationWithin(b);
    b.expectAllSealed(texts);
    await dev.endAsync();
  });
});

describe('announcements mid-queue', () => {
  const REJECTED = (reason: string) => `broker_publish_rejected_total\\{reason="${reason}"\\}`;

  it("a stale index, a replayed key and another app's key are each refused and close the connection; nothing is lost", async () => {
    const app = await registerApp(sys, 'att-stale');
    const other = await registerApp(sys, 'att-stale-other');
    await persistentAway(sys, app, 'devices/dev-stale/up/#');
    const { send, dev } = await device(sys, 'dev-stale');
    const n = 3 * LIMIT;
    for (const t of range(n, 's')) await send(t);

    const conns: TestApp[] = [];
    // The refused announcement is never acknowledged: the broker closes the connection instead.
    const refused = async (t: TestApp, ack: Promise<void>) => {
      const acked = ack.then(
        () => true,
        () => false,
      );
      await until(() => !t.client.connected, 'the refusal to close the connection', 3000);
      expect(await Promise.race([acked, pause(100).then(() => false)])).toBe(false);
    };
    const attempt = async (attack: (t: TestApp, first: { keyId: string }) => Promise<void>) => {
      const t = await TestApp.connect(sys, app, false);
      t.autoRotate = false; // so the queue stops at the key's limit, and the attack comes with the queue held
      conns.push(t);
      const first = await t.issue();
      await t.announce(0, first.keyId, first.key);
      await until(() => deduped(...conns).length >= Math.min(n, conns.length * LIMIT), 'a key worth of the queue');
      await attack(t, first);
    };
    const malformed = await metric(sys, REJECTED('malformed'));
    const foreign = await metric(sys, REJECTED('foreign_key'));

    // 1. A fresh key announced under the index already held.
    await attempt(async (t) => {
      const { keyId, key } = await t.issue();
      await refused(t, t.announce(0, keyId, key));
    });
    expect(await metric(sys, REJECTED('malformed'))).toBe(malformed + 1);
    // 2. The key this connection already announced, replayed under the next index (claimed already).
    await attempt(async (t, first) => {
      await refused(t, t.announce(1, first.keyId));
    });
    // 3. A key issued to another application, under the next index (the claim is unknown to this app).
    const thief = await TestApp.connect(sys, other, true);
    const stolen = await thief.issue();
    await attempt(async (t) => {
      await refused(t, t.announce(1, stolen.keyId, stolen.key));
    });
    expect(await metric(sys, REJECTED('foreign_key'))).toBe(foreign + 2);
    // The failed claim did not burn the other app's key: it announces it itself.
    await thief.announce(0, stolen.keyId, stolen.key);
    expect(thief.client.connected).toBe(true);

    // The rest of the queue, on an honest connection.
    const last = await TestApp.start(sys, app, false);
    conns.push(last);
    await until(() => deduped(...conns).length >= n, 'the whole queue');
    await pause(200);
    expect(deduped(...conns)).toEqual(range(n, 's'));
    for (const c of conns) {
      c.expectAllSealed(range(n, 's'));
      expectEachGenerationWithin(c);
      expect(c.refused).toBe(0);
    }
    await dev.endAsync();
  });

  it('announcements pipelined back to back (1, 2, 3, 4 in one write) are each above the one before: all accepted', async () => {
    const app = await registerApp(sys, 'att-burst');
    const t = await TestApp.start(sys, app, true);
    await t.client.subscribeAsync('devices/dev-burst/up/#', { qos: 1 });
    const keys = [];
    for (let i = 0; i < 4; i++) keys.push(await t.issue());
    const acks = keys.map((k, i) => t.announce(i + 1, k.keyId, k.key));
    const results = await Promise.allSettled(acks);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
    expect(t.client.connected).toBe(true);
    const { send, dev } = await device(sys, 'dev-burst');
    await send('after');
    await until(() => t.got.length === 1, 'the delivery after the burst');
    expect(t.got.map((g) => [g.text, g.generation])).toEqual([['after', 4]]);
    await dev.endAsync();
  });

  it('an app that rotates as fast as it can while a stored queue and live traffic flow loses nothing', async () => {
    const app = await registerApp(sys, 'att-spin');
    await persistentAway(sys, app, 'devices/dev-spin/up/#');
    const { send, dev } = await device(sys, 'dev-spin');
    const stored = range(40, 'q');
    for (const x of stored) await send(x);
    const t = await TestApp.start(sys, app, false);
    let spinning = true;
    const spin = (async () => {
      while (spinning && t.client.connected) await t.rotateNow();
    })();
    const live = range(40, 'l');
    for (const x of live) await send(x);
    await until(() => t.got.length >= 80, 'everything');
    spinning = false;
    await spin;
    await pause(200);
    expect(t.texts()).toEqual([...stored, ...live]);
    expect(t.refused).toBe(0);
    expect(t.generation).toBeGreaterThan(3);
    expectEachGenerationWithin(t);
    t.expectAllSealed([...stored, ...live]);
    await dev.endAsync();
  });
});

describe('limits, QoS, retained messages and notices', () => {
  // The bytes limit counts the message being sealed: a key 30,000 bytes into its 65,536 does not seal a 40,000-byte
  // message (that would be 70,000 bytes in one generation); the next key does.
  it('bytes: no generation seals more plaintext bytes than the limit, even when one large message would cross it', async () => {
    const app = await registerApp(sys, 'att-bytes');
    const t = await TestApp.start(sys, app, true);
    await t.client.subscribeAsync('devices/dev-bytes/up/#', { qos: 1 });
    const { send, dev } = await device(sys, 'dev-bytes');
    const texts = ['a'.repeat(30_000), 'b'.repeat(40_000), 'c'];
    for (const x of texts) await send(x);
    await until(() => t.got.length >= 3, 'the three messages');
    expect(t.got.map((g) => g.text.length)).toEqual([30_000, 40_000, 1]);
    const bytes = new Map<number, number>();
    for (const g of t.got) bytes.set(g.generation, (bytes.get(g.generation) ?? 0) + g.text.length);
    for (const [gen, b] of bytes) expect({ gen, over: b > 64 * 1024 }).toEqual({ gen, over: false });
    t.expectAllSealed(['aaaaaaaa', 'bbbbbbbb']);
    await dev.endAsync();
  });

  // A QoS 0 message on a QoS 1 subscription goes through Aedes' deliverQoS, which hands it to client.deliver0: were
  // both gated, the hold would queue it again behind later ones, and Aedes' duplicate check would drop it as older
  // than what went out before it, uncounted.
  it('QoS 0 and 1 mixed, held for the next key on a clean session: all of it, in order, under the next key', async () => {
    const app = await registerApp(sys, 'att-mixed');
    const t = await TestApp.start(sys, app, true);
    t.autoRotate = false;
    await t.client.subscribeAsync('devices/dev-mixed/up/#', { qos: 1 });
    const { send, dev } = await device(sys, 'dev-mixed');
    for (const x of range(LIMIT, 'x')) await send(x);
    await until(() => t.got.length >= LIMIT, 'the key to be spent');
    const dropped = await metric(sys, DROPPED);
    const held = range(6, 'h');
    for (const [i, x] of held.entries()) await send(x, { qos: i % 2 === 0 ? 1 : 0 });
    await pause(200);
    expect(t.got).toHaveLength(LIMIT); // held, not sent under the spent key
    await t.rotateNow();
    await until(() => t.got.length >= LIMIT + held.length, 'the held messages', 2000).catch(() => undefined);
    await pause(200);
    expect(t.texts().slice(LIMIT)).toEqual(held);
    expect(t.got.slice(LIMIT).map((g) => [g.generation, g.qos])).toEqual(held.map((_, i) => [1, i % 2 === 0 ? 1 : 0]));
    expect(await metric(sys, DROPPED)).toBe(dropped);
    t.expectAllSealed([...range(LIMIT, 'x'), ...held]);
    await dev.endAsync();
  });

  // The same as the test above, for the live deliveries held while a persistent session's queue waits.
  it('QoS 0 and 1 live while a persistent queue waits for the first key: stored, then live, in order', async () => {
    const app = await registerApp(sys, 'att-mixed-p');
    await persistentAway(sys, app, 'devices/dev-mixed-p/up/#');
    const { send, dev } = await device(sys, 'dev-mixed-p');
    const stored = range(4, 's');
    for (const x of stored) await send(x);
    const t = await TestApp.connect(sys, app, false);
    const live = range(4, 'l');
    for (const [i, x] of live.entries()) await send(x, { qos: i % 2 === 0 ? 0 : 1 });
    await pause(200);
    expect(t.wire).toEqual([]);
    await t.rotate();
    await until(() => t.got.length >= 8, 'stored and live', 2000).catch(() => undefined);
    await pause(200);
    expect(t.texts()).toEqual([...stored, ...live]);
    t.expectAllSealed([...stored, ...live]);
    await dev.endAsync();
  });

  it('a retained message reaches a persistent session that subscribes before announcing: held, then sealed', async () => {
    const app = await registerApp(sys, 'att-retained');
    const { send, dev } = await device(sys, 'dev-retained');
    await send('kept', { retain: true, sub: 'state' });
    const t = await TestApp.connect(sys, app, false);
    await t.client.subscribeAsync('devices/dev-retained/up/#', { qos: 1 });
    await send('live', { qos: 0 });
    await pause(300);
    expect(t.wire).toEqual([]); // nothing before the key, and nothing plaintext
    await t.rotate();
    await until(() => t.got.length >= 2, 'the retained and the live message');
    expect(t.got.map((g) => [g.text, g.retain])).toEqual([
      ['kept', true],
      ['live', false],
    ]);
    t.expectAllSealed(['kept', 'live']);
    // And retained again on a fresh subscription with the key spent: held for the next key, not dropped.
    t.autoRotate = false;
    for (const x of range(LIMIT, 'f')) await send(x);
    await until(() => t.got.length >= LIMIT, 'the key to be spent');
    await t.client.unsubscribeAsync('devices/dev-retained/up/#');
    await t.client.subscribeAsync('devices/dev-retained/up/state', { qos: 1 });
    await pause(300);
    const before = t.got.length;
    await t.rotateNow();
    await until(() => t.got.length > before, 'the retained message under the next key');
    await pause(200);
    // The two that the spent key could not seal (2 + 14 = 16 under generation 0), then the retained one, in order.
    expect(t.got.slice(before).map((g) => [g.text, g.retain, g.generation])).toEqual([
      ['f14', false, 1],
      ['f15', false, 1],
      ['kept', true, 1],
    ]);
    t.expectAllSealed(['kept']);
    await dev.endAsync();
  });

  it('the notice reaches the one connection whose key runs out, not another connection of the same app', async () => {
    const app = await registerApp(sys, 'att-two-conns');
    const one = await TestApp.start(sys, app, true);
    const two = await TestApp.connect(sys, app, true, `${app.appId}/two`);
    await two.rotate();
    await one.client.subscribeAsync('devices/dev-two-a/up/#', { qos: 1 });
    await two.client.subscribeAsync('devices/dev-two-b/up/#', { qos: 1 });
    const a = await device(sys, 'dev-two-a');
    const b = await device(sys, 'dev-two-b');
    await b.send('control');
    for (const x of range(LIMIT + 4, 'n')) await a.send(x);
    await until(() => one.got.length >= LIMIT + 4 && two.got.length === 1, 'both');
    await pause(200);
    expect(one.notices.length).toBeGreaterThanOrEqual(1);
    expect(one.notices[0]).toBe(0);
    expect(two.notices).toEqual([]);
    expect(two.generation).toBe(0);
    expect(one.texts()).toEqual(range(LIMIT + 4, 'n'));
    await a.dev.endAsync();
    await b.dev.endAsync();
  });

  it('a publish under a spent key is refused (key_spent), after a notice, and what went before reached its subscriber', async () => {
    const app = await registerApp(sys, 'att-spent-pub');
    const t = await TestApp.start(sys, app, true);
    t.autoRotate = false;
    const watcher = await sys.connectApp('att-spent-watch', { subscribe: ['devices/+/down/#'] });
    const seen: string[] = [];
    watcher.on('message', (_topic, payload) => seen.push(payload.toString()));
    await watcher.subscribeAsync('devices/dev-spent/down/#', { qos: 1 });
    const spent = await metric(sys, 'broker_publish_rejected_total\\{reason="key_spent"\\}');
    const topic = 'devices/dev-spent/down/cmd';
    for (const x of range(LIMIT, 'c')) await t.client.publishAsync(topic, t.seal(topic, x), { qos: 1 });
    void t.client.publishAsync(topic, t.seal(topic, 'one too many'), { qos: 1 }).catch(() => undefined);
    await until(() => !t.client.connected, 'the refusal to close the connection');
    expect(await metric(sys, 'broker_publish_rejected_total\\{reason="key_spent"\\}')).toBe(spent + 1);
    expect(t.notices).toEqual([0]);
    await until(() => seen.length >= LIMIT, 'the commands');
    await pause(200);
    expect(seen).toEqual(range(LIMIT, 'c'));
  });

  it('envelopes under the generation before still open; under one two back, refused (foreign_key)', async () => {
    const app = await registerApp(sys, 'att-old-gen');
    const t = await TestApp.start(sys, app, true);
    t.autoRotate = false;
    const watcher = await sys.connectApp('att-old-gen-watch', { subscribe: ['devices/+/down/#'] });
    const seen: string[] = [];
    watcher.on('message', (_topic, payload) => seen.push(payload.toString()));
    await watcher.subscribeAsync('devices/dev-old-gen/down/#', { qos: 1 });
    const topic = 'devices/dev-old-gen/down/cmd';
    const foreign = await metric(sys, 'broker_publish_rejected_total\\{reason="foreign_key"\\}');
    await t.client.publishAsync(topic, t.seal(topic, 'under-0'), { qos: 1 });
    await t.rotateNow();
    await t.client.publishAsync(topic, t.seal(topic, 'under-0-late', 0), { qos: 1 }); // the one before: opens
    await t.client.publishAsync(topic, t.seal(topic, 'under-1'), { qos: 1 });
    await t.rotateNow();
    void t.client.publishAsync(topic, t.seal(topic, 'under-0-too-late', 0), { qos: 1 }).catch(() => undefined);
    await until(() => !t.client.connected, 'the refusal to close the connection');
    expect(await metric(sys, 'broker_publish_rejected_total\\{reason="foreign_key"\\}')).toBe(foreign + 1);
    await until(() => seen.length >= 3, 'the three that opened');
    await pause(200);
    expect(seen).toEqual(['under-0', 'under-0-late', 'under-1']);
  });

  it('a clean session whose hold expires: exactly what was held is dropped and counted, and later traffic flows', async () => {
    const app = await registerApp(sys, 'att-clean-expire');
    const t = await TestApp.start(sys, app, true);
    t.autoRotate = false;
    await t.client.subscribeAsync('devices/dev-clean-expire/up/#', { qos: 1 });
    const { send, dev } = await device(sys, 'dev-clean-expire');
    const dropped = await metric(sys, DROPPED);
    for (const x of range(LIMIT, 'e')) await send(x);
    for (const [i, x] of range(5, 'held').entries()) await send(x, { qos: i % 2 === 0 ? 1 : 0 });
    await until(() => /"client":"att-clean-expire\/session".*"outcome":"expired"/.test(sys.logs()), 'the expiry', 6000);
    expect(sys.logs()).toMatch(
      /"client":"att-clean-expire\/session".*"outcome":"expired","held":5,"leftStored":0,"dropped":5/,
    );
    expect(await metric(sys, DROPPED)).toBe(dropped + 5);
    await t.rotateNow();
    await send('after');
    await until(() => t.got.length >= LIMIT + 1, 'the delivery after the expiry');
    await pause(200);
    expect(t.texts()).toEqual([...range(LIMIT, 'e'), 'after']);
    expect(t.got.at(-1)!.generation).toBe(1);
    t.expectAllSealed([...range(LIMIT, 'e'), ...range(5, 'held'), 'after']);
    await dev.endAsync();
  });

  it('a clean session that subscribes before its first announcement: nothing plaintext before it, sealed after', async () => {
    const app = await registerApp(sys, 'att-early');
    const t = await TestApp.connect(sys, app, true);
    await t.client.subscribeAsync('devices/dev-early/up/#', { qos: 1 });
    const forward = 'broker_policy_violations_total\\{leg="forward",rule="encryption"\\}';
    const refusedBefore = await metric(sys, forward);
    const { send, dev } = await device(sys, 'dev-early');
    await send('before-0');
    await send('before-1', { qos: 0 });
    await pause(200);
    expect(t.wire).toEqual([]); // dropped by the policy (§22.6 step 6: a clean session has no queue to wait in)
    expect(await metric(sys, forward)).toBe(refusedBefore + 2);
    await t.rotate();
    await send('after-0');
    await send('after-1', { qos: 0 });
    await until(() => t.got.length >= 2, 'the two after');
    await pause(200);
    expect(t.texts()).toEqual(['after-0', 'after-1']);
    t.expectAllSealed(['before-0', 'before-1', 'after-0', 'after-1']);
    await dev.endAsync();
  });

  it('the policy relaxed to optional while a persistent queue is held: still sealed once a key is announced, in order', async () => {
    const app = await registerApp(sys, 'att-policy');
    await persistentAway(sys, app, 'devices/dev-policy/up/#');
    const { send, dev } = await device(sys, 'dev-policy');
    for (const x of range(10, 'p')) await send(x);
    const t = await TestApp.connect(sys, app, false);
    await send('live0');
    const { version } = await sys.kms.admin.setPolicy('att-policy-relaxed', {
      role: 'app',
      filter: 'devices/dev-policy/up/#',
      encryption: 'optional',
    });
    await until(() => sys.broker.policy.current.version >= version, 'the policy');
    await send('live1');
    await pause(200);
    expect(t.wire).toEqual([]);
    await t.rotate();
    const texts = [...range(10, 'p'), 'live0', 'live1'];
    await until(() => t.got.length >= texts.length, 'the queue');
    await send('live2');
    await until(() => t.got.length >= texts.length + 1, 'a live one after');
    expect(t.texts()).toEqual([...texts, 'live2']);
    t.expectAllSealed([...texts, 'live2']);
    expect(t.wire).toHaveLength(texts.length + 1);
    await sys.kms.admin.deletePolicy('att-policy-relaxed');
    await dev.endAsync();
  });
});

describe('hold bounds (appHoldMessages 2, appHoldBytes 100,000) on a stored queue that fills the socket', () => {
  let big: TestSystem;
  beforeAll(async () => {
    big = await startTestSystem({
      rotation: { messages: 100_000, bytes: 1 << 30, seconds: 3600 },
      appHoldSeconds: 3,
      appHoldMessages: 2,
      appHoldBytes: 100_000,
    });
    await sealTelemetryForApps(big, 20);
  });
  afterAll(() => big.stop());
  const FAT = 'z'.repeat(200_000); // 30 of them, 6 MB: more than the loopback socket buffers take

  // While Aedes still sends the stored queue, live deliveries wait behind it; past appHoldMessages none may go out
  // ahead of the rest of the stored queue or of the ones waiting: Aedes' duplicate check would drop those as older
  // (and, for a persistent session, clear them from the store). Beyond the bound, a live delivery stays stored.
  it('live deliveries beyond the bound while the stored queue is still being sent: nothing overtakes, nothing lost', async () => {
    const app = await registerApp(big, 'att-overtake');
    await persistentAway(big, app, 'devices/dev-overtake/up/#');
    const { send, dev } = await device(big, 'dev-overtake');
    const stored = range(30, 'stored-').map((x) => `${x}:${FAT}`);
    for (const x of stored) await send(x);

    const a = await TestApp.connect(big, app, false);
    const { keyId, key } = await a.issue();
    void a.announce(0, keyId, key).catch(() => undefined);
    a.client.stream.pause(); // the app reads nothing for a while: the broker's writes wait for the socket
    await pause(500);
    const live = range(5, 'live-message-');
    // Not awaited: a delivery written to the app's full socket holds the publisher's PUBACK until it drains.
    const sent = live.map((x) => send(x));
    await pause(300);
    a.client.stream.resume();
    await Promise.all(sent);
    await until(() => a.got.length >= stored.length, 'the stored queue', 10_000);
    await pause(500);
    await a.client.endAsync();
    const b = await TestApp.start(big, app, false);
    await pause(500);
    const all = [...stored, ...live].map((x) => x.split(':')[0]);
    const short = (c: TestApp) => c.got.map((g) => ({ ...g, text: g.text.split(':')[0]! }));
    const seen = deduped({ got: short(a) } as TestApp, { got: short(b) } as TestApp);
    expect(seen).toEqual(all);
    a.expectAllSealed(['zzzzzzzzzzzzzzzz', ...live]);
    await dev.endAsync();
  });

  it('a stored queue far longer than appHoldMessages, and a live one past appHoldBytes: all of it, none plaintext', async () => {
    const app = await registerApp(big, 'att-bounds');
    await persistentAway(big, app, 'devices/dev-bounds/up/#');
    const { send, dev } = await device(big, 'dev-bounds');
    const stored = range(30, 'stored-');
    for (const x of stored) await send(x);
    const a = await TestApp.connect(big, app, false); // holds: no key yet
    const fat = `fat-${'f'.repeat(120_000)}`; // past appHoldBytes (100,000): left in the store
    await send('held-0');
    await send(fat);
    await send('held-1');
    await pause(300);
    expect(a.wire).toEqual([]);
    await a.rotate();
    await until(() => a.got.length >= 32, 'the queue and the two held');
    await pause(300);
    expect(a.texts()).toEqual([...stored, 'held-0', 'held-1']);
    await a.client.endAsync();
    expect(big.logs()).toMatch(/"client":"att-bounds\/session","outcome":"open","held":2,"leftStored":1,"dropped":0/);
    const b = await TestApp.start(big, app, false);
    await until(() => b.got.length >= 1, 'the one left stored');
    await pause(200);
    expect(b.texts()).toEqual([fat]);
    for (const c of [a, b]) c.expectAllSealed([...stored, 'held-0', 'held-1', 'ffffffffffffffff']);
    await dev.endAsync();
  });
});

describe('a key that ages out mid-queue (rotation.seconds 2)', () => {
  let aged: TestSystem;
  beforeAll(async () => {
    aged = await startTestSystem({ rotation: { messages: 100_000, bytes: 1 << 30, seconds: 2 }, appHoldSeconds: 5 });
    await sealTelemetryForApps(aged, 20);
  });
  afterAll(() => aged.stop());

  it('what the aged key could not seal goes again under the next key, on this connection, in order; nothing plaintext', async () => {
    const app = await registerApp(aged, 'att-aged');
    await persistentAway(aged, app, 'devices/dev-aged/up/#');
    const { send, dev } = await device(aged, 'dev-aged');
    const stored = range(30, 'stored-');
    for (const x of stored) await send(`${x}:${'y'.repeat(200_000)}`);

    const a = await TestApp.connect(aged, app, false);
    const { keyId, key } = await a.issue();
    void a.announce(0, keyId, key).catch(() => undefined);
    a.client.stream.pause(); // the queue stalls with messages read ahead of the seal...
    await pause(2500); // ...while the key ages out
    a.client.stream.resume();
    await until(() => a.generation >= 1, 'the rotation');
    await pause(1500);
    await a.client.endAsync();
    const b = await TestApp.start(aged, app, false);
    await pause(1000);
    const short = (c: TestApp) => c.got.map((g) => g.text.split(':')[0]!);
    // The key aged out with the queue part-way: the rest went under the next key (§22.8: a stored message the hook
    // could not seal after all goes again under the next key, in its place), all on this connection, in order.
    expect(new Set(a.got.map((g) => g.generation)).size).toBeGreaterThan(1);
    expect(short(a)).toEqual(stored);
    expect(b.got).toEqual([]);
    for (const c of [a, b]) c.expectAllSealed(['yyyyyyyyyyyyyyyy']);
    await dev.endAsync();
  });
});
