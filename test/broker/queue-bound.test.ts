// The per-client queue bound on a real Aedes (its memory persistence, real sockets): random sequences of publish,
// connect (clean 0 or 1, takeover), disconnect, PUBACK, PUBREC and PUBCOMP, checked against a model after every
// step; and the drop rules (newest dropped, logged once per burst, other clients unaffected).
import { createServer, type Server } from 'node:net';
import { Aedes } from 'aedes';
import fc from 'fast-check';
import type { Packet } from 'mqtt-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { QueueBound, type QueueLimits } from '../../broker/queue-bound.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';

interface Entry {
  id: number;
  qos: 1 | 2;
  bytes: number;
  /** PUBLISH until the client's PUBREC of a QoS 2 message, then PUBREL (no payload) until its PUBCOMP. */
  state: 'publish' | 'pubrel';
  messageId?: number;
}

interface Subscriber {
  name: string;
  /** A persistent session exists at the broker (subscribed with clean session off). */
  session: boolean;
  entries: Entry[];
  online: 'off' | 'clean' | 'persistent';
  /** Messages a clean connection receives live (nothing is stored for it). */
  live: number[];
  conn?: Connection;
}

interface Connection {
  raw: RawMqtt;
  /** PUBLISH packets received and not yet acknowledged, in order of arrival. */
  inbox: Array<{ id: number; qos: number; messageId: number }>;
  /** Packet identifiers of PUBRELs received and not yet completed. */
  pubrels: number[];
  live: number[];
  /** Messages this connection received, acknowledged or not. */
  seen: Set<number>;
}

/** A broker under test: plain Aedes, the bound attached, on a free loopback port. */
class Rig {
  readonly warnings: object[] = [];
  readonly infos: object[] = [];
  /** Longest queue the persistence itself ever held per client, read right after each store. */
  readonly peak = new Map<string, number>();
  private constructor(
    readonly aedes: Aedes,
    readonly bound: QueueBound,
    readonly server: Server,
    readonly url: string,
  ) {}

  static async start(limits: QueueLimits, spyPeak = false): Promise<Rig> {
    const aedes = new Aedes({});
    await aedes.listen();
    if (spyPeak) {
      // Each delivered copy's payload grows, as the QKey plugin's sealing makes it: the ledger must still count
      // the bytes the persistence holds, never the delivered copy's.
      aedes.authorizeForward = (_client, packet) => {
        packet.payload = Buffer.concat([packet.payload as Buffer, Buffer.alloc(29, 0xee)]);
        return packet;
      };
    }
    const warnings: object[] = [];
    const infos: object[] = [];
    const bound = new QueueBound({
      ...limits,
      log: { warn: (o) => warnings.push(o), info: (o) => infos.push(o) },
    });
    const inner = (aedes as unknown as { persistence: Record<string, (...a: unknown[]) => Promise<unknown>> })
      .persistence;
    const server = createServer((socket) => aedes.handle(socket));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const rig = new Rig(aedes, bound, server, `mqtt://127.0.0.1:${(server.address() as { port: number }).port}`);
    Object.assign(rig, { warnings, infos });
    if (spyPeak) {
      // Below the bound: what the persistence really holds after every store, whatever the bound believes. The
      // store's own promise goes back unchanged: a wrapper taking more turns would reorder deliveries.
      const combi = inner.outgoingEnqueueCombi!.bind(inner);
      inner.outgoingEnqueueCombi = (subs, packet) => {
        const stored = combi(subs, packet);
        void stored.then(async () => {
          for (const s of subs as Array<{ clientId: string }>) {
            const n = (await rig.queue(s.clientId)).length;
            rig.peak.set(s.clientId, Math.max(n, rig.peak.get(s.clientId) ?? 0));
          }
        });
        return stored;
      };
    }
    bound.attach(aedes);
    return rig;
  }

  /** The client's queue as the persistence holds it (its public outgoingStream). */
  async queue(clientId: string): Promise<Array<{ cmd: string; messageId?: number; payload?: Buffer }>> {
    const out: Array<{ cmd: string; messageId?: number; payload?: Buffer }> = [];
    const persistence = (this.aedes as unknown as { persistence: { outgoingStream(c: object): AsyncIterable<never> } })
      .persistence;
    for await (const p of persistence.outgoingStream({ id: clientId })) out.push(p);
    return out;
  }

  publish(topic: string, id: number, bytes: number, qos: 1 | 2): Promise<void> {
    const payload = Buffer.alloc(bytes, 0x2e);
    payload.writeUInt32BE(id, 0);
    return new Promise((resolve, reject) =>
      this.aedes.publish({ cmd: 'publish', topic, payload, qos, retain: false, dup: false }, (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }

  async stop(): Promise<void> {
    await new Promise<void>((r) => this.aedes.close(() => r()));
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

let rigs: Rig[] = [];
afterEach(async () => {
  await Promise.all(rigs.map((r) => r.stop()));
  rigs = [];
});

async function startRig(limits: QueueLimits, spyPeak = false): Promise<Rig> {
  const rig = await Rig.start(limits, spyPeak);
  rigs.push(rig);
  return rig;
}

/** Connects and (for a new session, or a clean one) subscribes to the subscriber's topic and to q/all at QoS 2. */
async function connect(rig: Rig, sub: Subscriber, clean: boolean): Promise<void> {
  const old = sub.conn;
  // Aedes resends the session's queue after CONNACK and reports the client ready once it has.
  const ready = new Promise<void>((resolve) =>
    rig.aedes.on('clientReady', function onReady(c) {
      if (c.id !== sub.name) return;
      rig.aedes.off('clientReady', onReady);
      resolve();
    }),
  );
  const { raw, returnCode } = await RawMqtt.connect(rig.url, { clientId: sub.name, clean, keepalive: 0 });
  expect(returnCode).toBe(0);
  await ready;
  if (old) await old.raw.closedWithin(); // taken over [MQTT-3.1.4-2]
  sub.conn = { raw, inbox: [], pubrels: [], live: [], seen: new Set() };
  if (clean) {
    sub.session = false;
    sub.entries = [];
    sub.live = [];
  }
  if (clean || !sub.session) {
    raw.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: [
        { topic: `q/${sub.name}`, qos: 2 },
        { topic: 'q/all', qos: 2 },
      ],
    } as Packet);
    await raw.next('suback');
    sub.session = !clean;
  }
  sub.online = clean ? 'clean' : 'persistent';
}

async function disconnect(rig: Rig, sub: Subscriber, reset: boolean): Promise<void> {
  if (!sub.conn) return;
  if (reset) sub.conn.raw.reset();
  else sub.conn.raw.send({ cmd: 'disconnect' } as Packet);
  await sub.conn.raw.closed;
  sub.conn = undefined;
  sub.online = 'off';
  // Until Aedes has let the connection go, a publish may still be written to it.
  await until(() => (rig.aedes as unknown as { clients: Record<string, unknown> }).clients[sub.name] === undefined);
}

/**
 * Moves what the connection received into its inbox, PUBRELs and live lists. A message may arrive twice, with a
 * new packet identifier, when it is published while Aedes resends the queue at a reconnect (sent live, and again
 * from the queue); the identifier the queue holds is the later one. A repeat of a message already acknowledged is
 * let go (QoS 1 is at least once). A clean connection acknowledges everything at once.
 */
function collect(sub: Subscriber): void {
  const c = sub.conn;
  if (!c) return;
  for (const p of c.raw.received.splice(0)) {
    if (p.cmd === 'publish') {
      const id = (p.payload as Buffer).readUInt32BE(0);
      const again = c.seen.has(id);
      c.seen.add(id);
      if (sub.online === 'clean') {
        c.live.push(id);
        c.raw.send({ cmd: p.qos === 1 ? 'puback' : 'pubrec', messageId: p.messageId! } as Packet);
      } else {
        const held = c.inbox.find((m) => m.id === id);
        if (held) held.messageId = p.messageId!;
        else if (!again) c.inbox.push({ id, qos: p.qos, messageId: p.messageId! });
      }
    } else if (p.cmd === 'pubrel') {
      if (sub.online === 'clean') c.raw.send({ cmd: 'pubcomp', messageId: p.messageId! } as Packet);
      else c.pubrels.push(p.messageId!);
    }
  }
}

/**
 * Acknowledges the oldest `n` messages received: PUBACK at QoS 1, PUBREC at QoS 2. With `again`, each PUBACK is
 * sent twice and one more names a packet identifier in use by nothing: neither may remove another message.
 */
function ack(sub: Subscriber, n: number, again = false): void {
  const c = sub.conn;
  if (!c || sub.online !== 'persistent') return;
  // Only one QoS 2 message at a time between PUBREC and PUBCOMP: with two, Aedes' memory persistence turns the
  // second PUBREC into an update of the first PUBREL and leaves the second message queued (an upstream defect,
  // outside the bound; see the report of this change).
  while (n-- > 0 && c.inbox.length > 0) {
    if (c.inbox[0]!.qos === 2 && sub.entries.some((e) => e.state === 'pubrel')) return;
    const m = c.inbox.shift()!;
    const i = sub.entries.findIndex((e) => e.id === m.id && e.state === 'publish');
    if (m.qos === 1) {
      c.raw.send({ cmd: 'puback', messageId: m.messageId } as Packet);
      if (again) c.raw.send({ cmd: 'puback', messageId: m.messageId } as Packet);
      sub.entries.splice(i, 1);
    } else {
      c.raw.send({ cmd: 'pubrec', messageId: m.messageId } as Packet);
      Object.assign(sub.entries[i]!, { state: 'pubrel', messageId: m.messageId });
    }
  }
  if (again) c.raw.send({ cmd: 'puback', messageId: unusedId(sub) } as Packet);
}

function unusedId(sub: Subscriber): number {
  const used = new Set([...sub.conn!.inbox.map((m) => m.messageId), ...sub.entries.map((e) => e.messageId)]);
  let id = 1;
  while (used.has(id)) id++;
  return id;
}

function complete(sub: Subscriber): void {
  const c = sub.conn;
  if (!c || sub.online !== 'persistent') return;
  for (const messageId of c.pubrels.splice(0)) {
    c.raw.send({ cmd: 'pubcomp', messageId } as Packet);
    sub.entries.splice(
      sub.entries.findIndex((e) => e.state === 'pubrel' && e.messageId === messageId),
      1,
    );
  }
}

/** The model's verdict for a new message: stored if the queue has room for it (both bounds), else dropped. */
function admits(sub: Subscriber, bytes: number, limits: QueueLimits): boolean {
  const held = sub.entries.reduce((n, e) => n + (e.state === 'publish' ? e.bytes : 0), 0);
  return (
    (limits.maxMessages === 0 || sub.entries.length < limits.maxMessages) &&
    (limits.maxBytes === 0 || held + bytes <= limits.maxBytes)
  );
}

/** What is wrong between the broker and the model right now, or undefined. */
async function mismatch(rig: Rig, subs: Subscriber[]): Promise<string | undefined> {
  let total = 0;
  for (const sub of subs) {
    collect(sub);
    const real = await rig.queue(sub.name);
    total += real.length;
    const seen = real.map((p) => (p.cmd === 'publish' ? `m${p.payload!.readUInt32BE(0)}` : `rel${p.messageId}`));
    const want = sub.entries.map((e) => (e.state === 'publish' ? `m${e.id}` : `rel${e.messageId}`));
    if (seen.join() !== want.join()) return `${sub.name} queue [${seen.join()}], model [${want.join()}]`;
    const bytes = real.reduce((n, p) => n + (p.cmd === 'publish' ? p.payload!.length : 0), 0);
    const ledger = rig.bound.queued(sub.name);
    if (ledger.messages !== real.length || ledger.bytes !== bytes)
      return `${sub.name} ledger ${JSON.stringify(ledger)}, persistence ${real.length} messages ${bytes} bytes`;
    if (sub.online === 'persistent') {
      // As a set: at a reconnect racing live publishes, the resent queue and live deliveries interleave.
      const inbox = sub.conn!.inbox.map((m) => m.id).sort((a, b) => a - b);
      const unacked = sub.entries.filter((e) => e.state === 'publish').map((e) => e.id);
      if (inbox.join() !== unacked.join())
        return `${sub.name} received [${inbox.join()}], expected [${unacked.join()}]`;
      const rels = [...sub.conn!.pubrels].sort().join();
      const owed = sub.entries.flatMap((e) => (e.state === 'pubrel' ? [e.messageId!] : [])).sort();
      if (rels !== owed.join()) return `${sub.name} PUBRELs [${rels}], expected [${owed.join()}]`;
    }
    if (sub.online === 'clean' && sub.conn!.live.join() !== sub.live.join())
      return `${sub.name} live [${sub.conn!.live.join()}], expected [${sub.live.join()}]`;
  }
  if (rig.bound.total.messages !== total) return `bound total ${rig.bound.total.messages}, persistence ${total}`;
  return undefined;
}

async function until(ok: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits until broker and model agree (deliveries and acknowledgements settle), failing with the last difference. */
async function settle(rig: Rig, subs: Subscriber[], limits: QueueLimits): Promise<void> {
  let last: string | undefined;
  await until(async () => (last = await mismatch(rig, subs)) === undefined).catch(() => {
    throw new Error(`broker and model disagree: ${last}`);
  });
  for (const sub of subs)
    if (limits.maxMessages > 0) expect(rig.peak.get(sub.name) ?? 0).toBeLessThanOrEqual(limits.maxMessages);
}

/** `n` publishes at once (a burst); a persistent connect may race `burst` publishes to its session. */
type Action =
  | { t: 'publish'; to: 0 | 1 | 'all'; qos: 1 | 2; bytes: number; n: number }
  | { t: 'connect'; who: 0 | 1; clean: boolean; burst: number }
  | { t: 'disconnect'; who: 0 | 1; reset: boolean }
  | { t: 'ack'; who: 0 | 1; n: number; again: boolean }
  | { t: 'complete'; who: 0 | 1 };

const who = fc.constantFrom<0 | 1>(0, 1);
const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant('publish' as const),
      to: fc.constantFrom<0 | 1 | 'all'>(0, 1, 'all'),
      qos: fc.constantFrom<1 | 2>(1, 2),
      bytes: fc.integer({ min: 4, max: 16 }),
      n: fc.oneof({ weight: 3, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.integer({ min: 2, max: 6 }) }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('connect' as const),
      who,
      clean: fc.boolean(),
      burst: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 4 })),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('disconnect' as const), who, reset: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('ack' as const),
      who,
      n: fc.integer({ min: 1, max: 3 }),
      again: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('complete' as const), who }) },
);
const limitsArb: fc.Arbitrary<QueueLimits> = fc.record({
  maxMessages: fc.integer({ min: 1, max: 4 }),
  maxBytes: fc.oneof(fc.constant(0), fc.integer({ min: 16, max: 48 })),
});

describe('model: the queue never exceeds its bound and nothing within it is lost', () => {
  it('random publish / connect / disconnect / ack sequences', async () => {
    let nextId = 1;
    await fc.assert(
      fc.asyncProperty(
        limitsArb,
        fc.array(action, { minLength: 1, maxLength: 40, size: 'medium' }),
        async (limits, actions) => {
          const rig = await startRig(limits, true);
          const subs: Subscriber[] = ['s0', 's1'].map((name) => ({
            name,
            session: false,
            entries: [],
            online: 'off',
            live: [],
          }));
          /** Admits each message in the model, in publish order (Aedes stores them in that order), then publishes. */
          const publishes = (to: 0 | 1 | 'all', qos: 1 | 2, bytes: number, n: number) =>
            Array.from({ length: n }, () => {
              const id = nextId++;
              for (const s of to === 'all' ? subs : [subs[to]!]) {
                if (s.session && admits(s, bytes, limits)) s.entries.push({ id, qos, bytes, state: 'publish' });
                if (s.online === 'clean') s.live.push(id);
              }
              return rig.publish(to === 'all' ? 'q/all' : `q/${subs[to]!.name}`, id, bytes, qos);
            });
          try {
            for (const a of actions) {
              if (a.t === 'publish') await Promise.all(publishes(a.to, a.qos, a.bytes, a.n));
              else if (a.t === 'connect') {
                const s = subs[a.who]!;
                // Only into a session that exists and survives this connect: elsewhere the race has no one outcome.
                const racing = !a.clean && s.session ? publishes(a.who, 1, 4, a.burst) : [];
                await Promise.all([connect(rig, s, a.clean), ...racing]);
              } else if (a.t === 'disconnect') await disconnect(rig, subs[a.who]!, a.reset);
              else if (a.t === 'ack') ack(subs[a.who]!, a.n, a.again);
              else complete(subs[a.who]!);
              await settle(rig, subs, limits);
            }
            // Everything still queued is delivered on reconnect and leaves the queue when acknowledged.
            for (const s of subs) {
              if (!s.session) continue;
              if (s.online !== 'persistent') await connect(rig, s, false);
              for (let round = 0; s.entries.length > 0 && round < 100; round++) {
                await settle(rig, subs, limits);
                ack(s, Infinity);
                await settle(rig, subs, limits);
                complete(s);
              }
              await settle(rig, subs, limits);
              expect(s.entries).toEqual([]);
            }
            expect(rig.bound.total).toEqual({ messages: 0, bytes: 0 });
          } finally {
            for (const s of subs) s.conn?.raw.destroy();
            await rig.stop();
            rigs = rigs.filter((r) => r !== rig);
          }
        },
      ),
      { numRuns: 50 },
    );
  }, 120_000);
});

/** A persistent session that subscribes and goes offline. */
async function offlineSession(rig: Rig, name: string, filters = [`q/${name}`]): Promise<void> {
  const { raw } = await RawMqtt.connect(rig.url, { clientId: name, clean: false, keepalive: 0 });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: filters.map((topic) => ({ topic, qos: 1 })) } as Packet);
  await raw.next('suback');
  raw.send({ cmd: 'disconnect' } as Packet);
  await raw.closed;
  await until(() => (rig.aedes as unknown as { clients: Record<string, unknown> }).clients[name] === undefined);
}

const idsOf = (queue: Array<{ payload?: Buffer }>) => queue.map((p) => p.payload!.readUInt32BE(0));

describe('beyond the bound', () => {
  it('new messages are dropped, the oldest kept; one warning per burst; another client unaffected', async () => {
    const rig = await startRig({ maxMessages: 5, maxBytes: 0 });
    await offlineSession(rig, 'a');
    await offlineSession(rig, 'b');
    for (let i = 0; i < 20; i++) await rig.publish('q/a', i, 8, 1);
    for (let i = 100; i < 103; i++) await rig.publish('q/b', i, 8, 2);
    expect(idsOf(await rig.queue('a'))).toEqual([0, 1, 2, 3, 4]);
    expect(idsOf(await rig.queue('b'))).toEqual([100, 101, 102]);
    expect(rig.bound.dropped).toEqual({ messages: 15, bytes: 0 });
    expect(rig.warnings).toEqual([expect.objectContaining({ client: 'a', reason: 'messages', queued: 5 })]);

    // The client comes back and acknowledges: the burst ends (with its count), and a new flood warns again.
    const { raw } = await RawMqtt.connect(rig.url, { clientId: 'a', clean: false, keepalive: 0 });
    for (let n = 0; n < 5; n++) {
      const p = (await raw.next('publish')) as { messageId: number; payload: Buffer };
      expect(p.payload.readUInt32BE(0)).toBe(n);
      raw.send({ cmd: 'puback', messageId: p.messageId } as Packet);
    }
    await until(() => rig.bound.queued('a').messages === 0);
    expect(rig.infos).toEqual([expect.objectContaining({ client: 'a', dropped: 15 })]);
    raw.send({ cmd: 'disconnect' } as Packet);
    await raw.closed;
    await until(() => (rig.aedes as unknown as { clients: Record<string, unknown> }).clients.a === undefined);
    for (let i = 20; i < 30; i++) await rig.publish('q/a', i, 8, 1);
    expect(idsOf(await rig.queue('a'))).toEqual([20, 21, 22, 23, 24]);
    expect(rig.warnings).toHaveLength(2);
  });

  it('a connected client that does not acknowledge gets nothing beyond the bound, and stays connected', async () => {
    const rig = await startRig({ maxMessages: 3, maxBytes: 0 });
    const { raw } = await RawMqtt.connect(rig.url, { clientId: 'slow', clean: false, keepalive: 0 });
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'q/slow', qos: 1 }] } as Packet);
    await raw.next('suback');
    await Promise.all(Array.from({ length: 10 }, (_, i) => rig.publish('q/slow', i, 8, 1)));
    raw.send({ cmd: 'pingreq' } as Packet);
    await raw.next('pingresp');
    const got = raw.received.filter((p) => p.cmd === 'publish').map((p) => (p.payload as Buffer).readUInt32BE(0));
    expect(got).toEqual([0, 1, 2]);
    expect(idsOf(await rig.queue('slow'))).toEqual([0, 1, 2]);
    expect(raw.socket.destroyed).toBe(false);
    raw.destroy();
  });

  it('the byte bound: a message that would cross it is dropped, a smaller one after it may still fit', async () => {
    const rig = await startRig({ maxMessages: 0, maxBytes: 100 });
    await offlineSession(rig, 'a');
    for (const [id, bytes] of [
      [1, 30],
      [2, 30],
      [3, 30],
      [4, 30],
      [5, 10],
    ] as const)
      await rig.publish('q/a', id, bytes, 1);
    expect(idsOf(await rig.queue('a'))).toEqual([1, 2, 3, 5]);
    expect(rig.bound.queued('a')).toEqual({ messages: 4, bytes: 100 });
    expect(rig.bound.dropped).toEqual({ messages: 0, bytes: 1 });
  });

  it('overlapping filters: a message stored once per matching filter takes all its places or none', async () => {
    const rig = await startRig({ maxMessages: 3, maxBytes: 0 });
    await offlineSession(rig, 'a', ['o/x', 'o/#']);
    await rig.publish('o/x', 1, 8, 1);
    await rig.publish('o/x', 2, 8, 1);
    expect(idsOf(await rig.queue('a'))).toEqual([1, 1]);
    expect(rig.bound.queued('a').messages).toBe(2);
  });

  it('retained messages are not part of the bound: a client at its bound still gets them when it subscribes', async () => {
    const rig = await startRig({ maxMessages: 2, maxBytes: 0 });
    for (let i = 0; i < 4; i++)
      await new Promise<void>((resolve) =>
        rig.aedes.publish(
          { cmd: 'publish', topic: `r/${i}`, payload: Buffer.from([0, 0, 0, i]), qos: 1, retain: true, dup: false },
          () => resolve(),
        ),
      );
    const { raw } = await RawMqtt.connect(rig.url, { clientId: 'full', clean: false, keepalive: 0 });
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'q/full', qos: 1 }] } as Packet);
    await raw.next('suback');
    for (let i = 0; i < 4; i++) await rig.publish('q/full', 10 + i, 8, 1);
    expect(rig.bound.queued('full').messages).toBe(2);
    raw.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'r/#', qos: 1 }] } as Packet);
    await until(() => raw.received.filter((p) => p.cmd === 'publish' && p.retain).length === 4);
    expect(rig.bound.queued('full').messages).toBe(2);
    raw.destroy();
  });

  it('attached before aedes.listen(): the persistence it creates is bounded', async () => {
    const aedes = new Aedes({});
    const bound = new QueueBound({ maxMessages: 1, maxBytes: 0 });
    bound.attach(aedes);
    await aedes.listen();
    const server = createServer((socket) => aedes.handle(socket));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const rig = Object.assign(Object.create(Rig.prototype) as Rig, {
      aedes,
      bound,
      server,
      url: `mqtt://127.0.0.1:${(server.address() as { port: number }).port}`,
    });
    rigs.push(rig);
    await offlineSession(rig, 'a');
    await rig.publish('q/a', 1, 8, 1);
    await rig.publish('q/a', 2, 8, 1);
    expect(idsOf(await rig.queue('a'))).toEqual([1]);
  });
});
