// An Aedes persistence in Redis that several broker processes share: subscriptions, retained messages, QoS 2
// incoming state, and one outgoing queue entry per subscriber (outgoing-scripts.ts), all of it in Redis, none of it
// in a process-local cache, so a client continues its session on whichever broker it reaches next.
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import type { Redis } from 'ioredis';
import { decodeRecord, encodeRecord, payloadBytes } from './codec.js';
import { CLEAR, ENQUEUE, LIST, UPDATE } from './outgoing-scripts.js';

const require = createRequire(import.meta.url);
/** aedes-persistence's helper that keeps every broker's subscription matcher in step over the shared emitter. */
const BroadcastPersistence = require('aedes-persistence/broadcastPersistence.js') as new (
  broker: unknown,
  trie: QlobberSub,
) => Broadcast;
const QlobberSubClass = require('qlobber/aedes/qlobber-sub') as new (options: object) => QlobberSub;
const { QlobberTrue } = require('qlobber') as { QlobberTrue: new (options: object) => QlobberTrueT };

/** The matching rules of MQTT topic filters [MQTT-4.7.1], as Aedes configures qlobber. */
const QLOBBER_OPTIONS = { separator: '/', wildcard_one: '+', wildcard_some: '#', match_empty_levels: true };

interface QlobberSub {
  add(topic: string, sub: object): void;
  remove(topic: string, sub: object): void;
  match(topic: string, exact?: string): Array<{ clientId: string; topic: string; qos: number }>;
  readonly subscriptionsCount: number;
}
interface QlobberTrueT {
  add(topic: string): void;
  test(topic: string): boolean;
}
interface Broadcast {
  brokerSubscribe(): Promise<void>;
  brokerUnsubscribe(): Promise<void>;
  addedSubscriptions(client: ClientRef, subs: StoredSubscription[]): Promise<unknown>;
  removedSubscriptions(client: ClientRef, topics: string[]): Promise<unknown>;
}

interface ClientRef {
  id: string;
}
export interface StoredSubscription {
  topic: string;
  qos: number;
  [option: string]: unknown;
}
/** A packet as Aedes hands it to a persistence. */
export interface PersistedPacket {
  cmd?: string;
  topic?: string;
  payload?: Buffer | string;
  qos?: number;
  messageId?: number;
  brokerId?: string;
  brokerCounter?: number;
  [field: string]: unknown;
}

export interface RedisPersistenceOptions {
  /** A connected ioredis client; the persistence owns it from here on and closes it on destroy(). */
  redis: Redis;
  /** Prefix of every key, so that several deployments (or tests) can share one Redis. Default "qkey:". */
  prefix?: string;
  /** Bound on each client's queue (0: none), enforced atomically in Redis across every broker. */
  maxQueuedMessages?: number;
  maxQueuedBytes?: number;
  /** A copy was not queued because the client's queue is at its bound. */
  onDropped?: (clientId: string, reason: 'messages' | 'bytes') => void;
}

interface OutgoingCommands {
  qkeyEnqueue(list: string, hash: string, ...args: Array<string | number>): Promise<string>;
  qkeyUpdate(list: string, hash: string, ...args: Array<string | number>): Promise<number>;
  qkeyClear(list: string, hash: string, ...args: Array<string | number>): Promise<[string, string] | null>;
  qkeyList(list: string, hash: string): Promise<string[]>;
}

const id = (clientId: string) => encodeURIComponent(clientId);
/** Clients whose subscriptions are read in one round trip when a broker starts. */
const SETUP_BATCH = 500;
const identity = (p: PersistedPacket) => `${p.brokerId ?? ''}\n${p.brokerCounter ?? ''}`;

export class RedisPersistence {
  private readonly db: Redis & OutgoingCommands;
  private readonly p: string;
  private readonly trie = new QlobberSubClass(QLOBBER_OPTIONS);
  private broadcast: Broadcast | undefined;
  private destroyed = false;
  broker: unknown;

  constructor(private readonly o: RedisPersistenceOptions) {
    this.p = o.prefix ?? 'qkey:';
    const db = o.redis as Redis & OutgoingCommands;
    db.defineCommand('qkeyEnqueue', { numberOfKeys: 2, lua: ENQUEUE });
    db.defineCommand('qkeyUpdate', { numberOfKeys: 2, lua: UPDATE });
    db.defineCommand('qkeyClear', { numberOfKeys: 2, lua: CLEAR });
    db.defineCommand('qkeyList', { numberOfKeys: 2, lua: LIST });
    this.db = db;
  }

  private key(...parts: string[]): string {
    return this.p + parts.join(':');
  }

  /** Loads every stored subscription into this broker's matcher, then follows the other brokers' changes. */
  async setup(broker: unknown): Promise<void> {
    this.broker = broker;
    await this.resumeCounter(broker as { id?: string; counter?: number });
    this.broadcast = new BroadcastPersistence(broker, this.trie);
    const clients = await this.db.smembers(this.key('clients'));
    for (let i = 0; i < clients.length; i += SETUP_BATCH) {
      const batch = clients.slice(i, i + SETUP_BATCH);
      const read = this.db.pipeline();
      for (const clientId of batch) read.hgetall(this.key('sub', id(clientId)));
      const results = (await read.exec()) ?? [];
      batch.forEach((clientId, k) => {
        const [err, subs] = results[k] ?? [new Error('no reply')];
        if (err) throw err;
        for (const text of Object.values(subs as Record<string, string>)) {
          const sub = decodeRecord<StoredSubscription>(text);
          if (sub.qos > 0) this.trie.add(sub.topic, { ...sub, clientId });
        }
      });
    }
    await this.broadcast.brokerSubscribe();
  }

  /**
   * Aedes numbers each message it publishes by its id and a counter (brokerCounter) that starts at 0 in every
   * process, and queue entries are found by that pair: a broker restarted under the same id must not number a new
   * message like one still queued from its previous run. Each start of a broker id takes the next epoch in Redis,
   * and its counter starts at (epoch - 1) x 2^32: 0 the first time, as Aedes' own (exact in a double below 2^53:
   * 2^21 starts of up to 2^32 messages each).
   */
  private async resumeCounter(broker: { id?: string; counter?: number }): Promise<void> {
    if (typeof broker.counter !== 'number' || typeof broker.id !== 'string') return;
    const epoch = await this.db.incr(this.key('epoch', encodeURIComponent(broker.id)));
    broker.counter = Math.max(broker.counter, (epoch - 1) * 2 ** 32);
  }

  // Retained messages: one hash, topic -> packet. An empty payload deletes [MQTT-3.3.1-10].
  async storeRetained(packet: PersistedPacket): Promise<void> {
    if (payloadBytes(packet.payload) === 0) await this.db.hdel(this.key('retained'), packet.topic!);
    else await this.db.hset(this.key('retained'), packet.topic!, encodeRecord(packet));
  }

  createRetainedStream(pattern: string): Readable {
    return this.createRetainedStreamCombi([pattern]);
  }

  /** Retained messages whose topic matches any of `patterns`, each once (Aedes pipes this stream). */
  createRetainedStreamCombi(patterns: string[]): Readable {
    return Readable.from(this.retainedMatching(patterns));
  }

  private async *retainedMatching(patterns: string[]): AsyncGenerator<PersistedPacket> {
    const matcher = new QlobberTrue(QLOBBER_OPTIONS);
    for (const p of patterns) matcher.add(p);
    let cursor = '0';
    do {
      const [next, fields] = await this.db.hscan(this.key('retained'), cursor, 'COUNT', 500);
      cursor = next;
      for (let i = 0; i + 1 < fields.length; i += 2)
        if (matcher.test(fields[i]!)) yield decodeRecord<PersistedPacket>(fields[i + 1]!);
    } while (cursor !== '0');
  }

  // Subscriptions: one hash per client (topic -> subscription) and the set of clients that have any.
  /**
   * Aedes stores a SUBSCRIBE's whole filter list once per filter, concurrently; the broadcast that tells the other
   * brokers waits for its own echo under one (client, first filter) key, so concurrent identical calls would leave
   * all but one waiting forever. A call identical to the one in flight shares it; other changes of one client's
   * subscriptions run one after another.
   */
  addSubscriptions(client: ClientRef, subs: StoredSubscription[]): Promise<void> {
    return this.inTurn(client.id, `+${encodeRecord({ subs })}`, () => this.storeSubscriptions(client, subs));
  }

  removeSubscriptions(client: ClientRef, topics: string[]): Promise<void> {
    return this.inTurn(client.id, `-${JSON.stringify(topics)}`, () => this.dropSubscriptions(client, topics));
  }

  private readonly subscriptionChanges = new Map<string, { what: string; done: Promise<void> }>();

  private inTurn(clientId: string, what: string, change: () => Promise<void>): Promise<void> {
    const last = this.subscriptionChanges.get(clientId);
    if (last?.what === what) return last.done;
    const done = (last?.done ?? Promise.resolve()).catch(() => undefined).then(change);
    const entry = { what, done };
    this.subscriptionChanges.set(clientId, entry);
    const forget = () => {
      if (this.subscriptionChanges.get(clientId) === entry) this.subscriptionChanges.delete(clientId);
    };
    done.then(forget, forget);
    return done;
  }

  private async storeSubscriptions(client: ClientRef, subs: StoredSubscription[]): Promise<void> {
    if (subs.length === 0) return;
    const fields: string[] = [];
    for (const s of subs) fields.push(s.topic, encodeRecord(s));
    await this.db
      .multi()
      .sadd(this.key('clients'), client.id)
      .hset(this.key('sub', id(client.id)), ...fields)
      .exec();
    await this.broadcast!.addedSubscriptions(client, subs);
  }

  private async dropSubscriptions(client: ClientRef, topics: string[]): Promise<void> {
    const subKey = this.key('sub', id(client.id));
    if (topics.length > 0) await this.db.hdel(subKey, ...topics);
    if ((await this.db.exists(subKey)) === 0) await this.db.srem(this.key('clients'), client.id);
    await this.broadcast!.removedSubscriptions(client, topics);
  }

  async subscriptionsByClient(client: ClientRef): Promise<StoredSubscription[]> {
    const subs = await this.db.hgetall(this.key('sub', id(client.id)));
    return Object.values(subs).map((text) => decodeRecord<StoredSubscription>(text));
  }

  async countOffline(): Promise<{ subsCount: number; clientsCount: number }> {
    return { subsCount: this.trie.subscriptionsCount, clientsCount: await this.db.scard(this.key('clients')) };
  }

  async subscriptionsByTopic(topic: string) {
    return this.trie.match(topic);
  }

  async cleanSubscriptions(client: ClientRef): Promise<void> {
    const subs = await this.subscriptionsByClient(client);
    if (subs.length > 0)
      await this.removeSubscriptions(
        client,
        subs.map((s) => s.topic),
      );
  }

  *getClientList(topic: string): Generator<string> {
    for (const sub of this.trie.match(topic, topic)) yield sub.clientId;
  }

  // Outgoing queues: one entry per subscriber's copy (outgoing-scripts.ts).
  private queueKeys(clientId: string): [string, string] {
    return [this.key('out', id(clientId)), this.key('oute', id(clientId))];
  }

  async outgoingEnqueue(sub: { clientId: string }, packet: PersistedPacket): Promise<void> {
    await this.outgoingEnqueueCombi([sub], packet);
  }

  /** A client named k times (overlapping filters: Aedes queues one copy per filter) takes k places, all or none. */
  async outgoingEnqueueCombi(subs: Array<{ clientId: string }>, packet: PersistedPacket): Promise<void> {
    if (subs.length === 0) return;
    const copies = new Map<string, number>();
    for (const s of subs) copies.set(s.clientId, (copies.get(s.clientId) ?? 0) + 1);
    const data = encodeRecord(storedForm(packet));
    const bytes = payloadBytes(packet.payload);
    const ident = identity(packet);
    const answers = await Promise.all(
      [...copies].map(([clientId, k]) =>
        this.db
          .qkeyEnqueue(
            ...this.queueKeys(clientId),
            data,
            ident,
            bytes,
            this.o.maxQueuedMessages ?? 0,
            this.o.maxQueuedBytes ?? 0,
            k,
          )
          .then((answer) => [clientId, answer] as const),
      ),
    );
    for (const [clientId, answer] of answers)
      if (answer === 'messages' || answer === 'bytes') this.o.onDropped?.(clientId, answer);
  }

  /**
   * A PUBLISH copy gets its packet identifier; a PUBLISH turned PUBREL replaces its copy. The packet Aedes passes
   * is the delivered one (sealed for a device): only its identifier is kept. A copy that is not there (the queue was
   * at its bound when the message came) is not stored, and the live delivery goes out unstored.
   */
  async outgoingUpdate(client: ClientRef, packet: PersistedPacket): Promise<void> {
    const [list, hash] = this.queueKeys(client.id);
    if (packet.cmd === 'pubrel')
      await this.db.qkeyUpdate(list, hash, 'pubrel', '', String(packet.messageId), encodeRecord(storedForm(packet)));
    else await this.db.qkeyUpdate(list, hash, 'publish', identity(packet), String(packet.messageId), '');
  }

  /**
   * Removes the copy with this packet identifier (PUBACK, PUBCOMP, a refused queued copy). Without one, Aedes asks to
   * clear a live delivery it did not send: refused by the forward hook, or dropped by its duplicate check, which keeps
   * one counter per publishing broker and so also drops a message that arrives after a later one. Over Redis the
   * publishes of one broker can reach another out of order (each waits for its own store round trip), and clearing
   * then would lose the message: the copy stays, and goes out (or is refused and cleared) at the next reconnect.
   */
  async outgoingClearMessageId(client: ClientRef, packet: PersistedPacket): Promise<PersistedPacket | undefined> {
    if (packet.messageId === undefined || packet.messageId === null) return undefined;
    const [list, hash] = this.queueKeys(client.id);
    const removed = await this.db.qkeyClear(list, hash, String(packet.messageId), identity(packet));
    return removed ? withMessageId(removed[0], removed[1]) : undefined;
  }

  /** The client's copies in order, read in one step (a snapshot, as the in-memory store gives). */
  outgoingStream(client: ClientRef): Readable {
    const list = this.db.qkeyList(...this.queueKeys(client.id));
    return Readable.from(
      (async function* () {
        const flat = await list;
        for (let i = 0; i + 1 < flat.length; i += 2) yield withMessageId(flat[i]!, flat[i + 1]!);
      })(),
    );
  }

  // QoS 2 packets received and not yet released [MQTT-4.3.3-2]: one hash per client, messageId -> packet.
  async incomingStorePacket(client: ClientRef, packet: PersistedPacket): Promise<void> {
    await this.db.hset(this.key('in', id(client.id)), String(packet.messageId), encodeRecord(storedForm(packet)));
  }

  async incomingGetPacket(client: ClientRef, packet: PersistedPacket): Promise<PersistedPacket> {
    const text = await this.db.hget(this.key('in', id(client.id)), String(packet.messageId));
    if (!text) throw new Error('no such packet');
    return decodeRecord<PersistedPacket>(text);
  }

  async incomingDelPacket(client: ClientRef, packet: PersistedPacket): Promise<void> {
    await this.db.hdel(this.key('in', id(client.id)), String(packet.messageId));
  }

  async cleanIncoming(client: ClientRef): Promise<void> {
    await this.db.del(this.key('in', id(client.id)));
  }

  /**
   * Wills are not stored. Aedes stores them so that another broker can publish the wills of a broker that died; a
   * device's will is an envelope only the broker that claimed its key can open, and the key service refuses that key
   * to any other broker, so no broker could publish it. Each broker publishes the wills of its own connections.
   */
  async putWill(): Promise<void> {}
  async getWill(): Promise<null> {
    return null;
  }
  async delWill(): Promise<null> {
    return null;
  }
  async *streamWill(): AsyncGenerator<never> {}

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    // Once Aedes closed its emitter (it does at close) there is nothing left to unsubscribe from.
    const mq = (this.broker as { mq?: { closed?: boolean } } | undefined)?.mq;
    if (mq && !mq.closed) await this.broadcast?.brokerUnsubscribe().catch(() => undefined);
    await this.db.quit().catch(() => this.db.disconnect());
  }
}

/**
 * The fields of a packet that a queue keeps, in aedes-packet's Packet form (never a socket, a callback or a
 * delivery's own fields); a PUBREL as Aedes gives it.
 */
function storedForm(p: PersistedPacket): PersistedPacket {
  if (p.cmd === 'pubrel') return { cmd: 'pubrel', messageId: p.messageId };
  const out: PersistedPacket = {
    cmd: p.cmd ?? 'publish',
    brokerId: p.brokerId,
    brokerCounter: p.brokerCounter,
    topic: p.topic,
    payload: p.payload ?? Buffer.alloc(0),
    qos: p.qos ?? 0,
    retain: p.retain ?? false,
    dup: p.dup ?? false,
  };
  if (p.messageId !== undefined) out.messageId = p.messageId;
  if (p.properties !== undefined) out.properties = p.properties;
  if (p.messageExpiry !== undefined) out.messageExpiry = p.messageExpiry;
  return out;
}

function withMessageId(text: string, messageId: string): PersistedPacket {
  const packet = decodeRecord<PersistedPacket>(text);
  // As aedes-packet's Packet: a QoS 1/2 PUBLISH or a PUBREL carries the field, unassigned until it has one.
  if (messageId !== '') packet.messageId = Number(messageId);
  else if ((packet.qos ?? 0) > 0 || packet.cmd !== 'publish') packet.messageId = undefined;
  return packet;
}
