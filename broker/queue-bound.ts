// Bounds each persistent session's queue of QoS 1/2 messages (Aedes' outgoing store) by messages and payload bytes,
// as Mosquitto's max_queued_messages and max_queued_bytes do: beyond the bound a new message for that client is
// dropped (never an older one), counted, and logged once per burst. Wraps any Aedes persistence.
import type { Aedes, AedesPublishPacket, Client } from 'aedes';

export interface QueueLimits {
  /** Entries one client's queue may hold, delivered-but-unacknowledged ones included; 0: no maximum. */
  maxMessages: number;
  /** Payload bytes of the messages one client's queue holds; 0: no maximum. */
  maxBytes: number;
}

export const DEFAULT_QUEUE_LIMITS: Readonly<QueueLimits> = { maxMessages: 1000, maxBytes: 16 * 1024 * 1024 };

/** Which bound a dropped message would have crossed; a metric label. */
export type QueueDropReason = 'messages' | 'bytes';

export interface QueueLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface QueueBoundOptions extends Partial<QueueLimits> {
  log?: QueueLog;
}

/** One queue entry as Aedes hands it over: a PUBLISH, or the PUBREL that replaces a QoS 2 PUBLISH at PUBREC. */
interface QueuedPacket {
  cmd: string;
  messageId?: number;
  brokerId?: string | null;
  brokerCounter?: number;
  payload?: Buffer | string;
}

/** The part of Aedes' persistence interface (aedes-persistence) whose results the bound follows. */
interface OutgoingStore {
  outgoingEnqueue(sub: { clientId: string }, packet: QueuedPacket): Promise<unknown>;
  outgoingEnqueueCombi(subs: Array<{ clientId: string }>, packet: QueuedPacket): Promise<unknown>;
  outgoingUpdate(client: { id: string }, packet: QueuedPacket): Promise<unknown>;
  outgoingClearMessageId(client: { id: string }, packet: QueuedPacket): Promise<QueuedPacket | undefined>;
}

/** One stored queue entry: its client, its payload bytes (0 for a PUBREL) and its packet identifier if sent. */
export interface QueuedEntry {
  clientId: string;
  bytes: number;
  messageId: number | undefined;
}

/** A persistence that keeps queues across restarts lists what it holds, so the bound starts from it. */
export interface QueueCensus {
  queuedEntries(): Iterable<QueuedEntry>;
}

/** Keys of dropped messages remembered per connected client, oldest forgotten first. */
const RECENT_DROPS = 1024;
const WRAPPED = Symbol('qkey.queueBound');

/** One client's queue as the bound sees it: what the persistence said it stored and removed. */
class Ledger {
  messages = 0;
  bytes = 0;
  /** Payload bytes of the entry that carries each packet identifier, released when it turns into a PUBREL. */
  byMessageId: Map<number, number> | undefined;
  /** Messages dropped in the current burst; 0 when not dropping. */
  dropped = 0;
  /** Messages dropped while the client was connected: their live delivery must not go out (see wasDropped). */
  recent: Set<string> | undefined;
  /**
   * Payload bytes of live deliveries as stored, noted before the forward hook may replace the delivered copy's
   * payload (the QKey plugin seals it) and taken when Aedes hands that copy to outgoingUpdate, a tick later.
   */
  delivering: Map<string, number> | undefined;
}

export class QueueBound {
  readonly limits: Readonly<QueueLimits>;
  /** Messages dropped, by the bound they would have crossed; /metrics reads them. */
  readonly dropped: Record<QueueDropReason, number> = { messages: 0, bytes: 0 };
  /** Entries and payload bytes held in all clients' queues. */
  readonly total = { messages: 0, bytes: 0 };
  private readonly ledgers = new Map<string, Ledger>();
  private clients: Record<string, unknown> = {};

  constructor(private readonly o: QueueBoundOptions = {}) {
    this.limits = {
      maxMessages: o.maxMessages ?? DEFAULT_QUEUE_LIMITS.maxMessages,
      maxBytes: o.maxBytes ?? DEFAULT_QUEUE_LIMITS.maxBytes,
    };
  }

  /**
   * Wraps the instance's persistence (now, or when aedes.listen() sets it) and its authorizeForward, which must
   * already be installed: a live delivery of a message dropped for that client is not sent.
   */
  attach(aedes: Aedes): void {
    const broker = aedes as unknown as { persistence?: object; clients: Record<string, unknown> };
    this.clients = broker.clients;
    if (broker.persistence) broker.persistence = this.wrap(broker.persistence);
    else {
      let wrapped: object | undefined;
      Object.defineProperty(broker, 'persistence', {
        configurable: true,
        enumerable: true,
        get: () => wrapped,
        set: (p: object | undefined) => (wrapped = p && this.wrap(p)),
      });
    }
    const forward = aedes.authorizeForward;
    aedes.authorizeForward = (client, packet) => {
      if (this.wasDropped(client, packet)) return null;
      const noted = this.noteDelivery(client, packet);
      const out = forward.call(aedes, client, packet);
      if (!out && noted) this.ledgers.get(client.id)?.delivering?.delete(noted);
      return out;
    };
  }

  /**
   * A live QoS 1/2 delivery to a persistent session (no packet identifier yet, not retained: Aedes' deliverQoS
   * then calls outgoingUpdate with it) has its stored payload size noted under the message's key.
   */
  private noteDelivery(client: Client, packet: AedesPublishPacket): string | undefined {
    if (client.clean !== false || packet.messageId !== undefined || packet.qos === 0 || packet.retain) return;
    const l = this.ledgers.get(client.id);
    if (!l) return;
    const key = keyOf(packet as QueuedPacket);
    (l.delivering ??= new Map()).set(key, bytesOf(packet.payload as Buffer));
    return key;
  }

  /** Each client's stored queue as a durable persistence holds it when the broker starts. */
  private seed(entries: Iterable<QueuedEntry>): void {
    for (const e of entries) {
      const l = this.ledgers.get(e.clientId) ?? this.ledger(e.clientId);
      l.messages++;
      l.bytes += e.bytes;
      this.total.messages++;
      this.total.bytes += e.bytes;
      // A PUBLISH sent before (it has its packet identifier) releases its bytes when it turns into a PUBREL.
      if (e.bytes > 0 && e.messageId !== undefined) (l.byMessageId ??= new Map()).set(e.messageId, e.bytes);
    }
  }

  /** What one client's queue holds, as the persistence reported it. */
  queued(clientId: string): { messages: number; bytes: number } {
    const l = this.ledgers.get(clientId);
    return { messages: l?.messages ?? 0, bytes: l?.bytes ?? 0 };
  }

  /** A persistence whose outgoing queue is bounded; every other call goes to `inner` unchanged. */
  wrap<P extends object>(inner: P): P {
    if ((inner as { [WRAPPED]?: boolean })[WRAPPED]) return inner;
    // A durable store holds queues from before this process started: they count from the start.
    const durable = inner as Partial<QueueCensus>;
    if (typeof durable.queuedEntries === 'function') this.seed(durable.queuedEntries());
    const store = inner as unknown as OutgoingStore;
    const own: Record<PropertyKey, unknown> = {
      [WRAPPED]: true,
      outgoingEnqueue: (sub: { clientId: string }, packet: QueuedPacket) =>
        this.enqueue(store, [sub], packet, (kept) => store.outgoingEnqueue(kept[0]!, packet)),
      outgoingEnqueueCombi: (subs: Array<{ clientId: string }>, packet: QueuedPacket) =>
        this.enqueue(store, subs, packet, (kept) => store.outgoingEnqueueCombi(kept, packet)),
      outgoingUpdate: (client: { id: string }, packet: QueuedPacket) => this.update(store, client, packet),
      outgoingClearMessageId: (client: { id: string }, packet: QueuedPacket) => this.clear(store, client, packet),
    };
    const bound = new Map<PropertyKey, [unknown, unknown]>();
    return new Proxy(inner, {
      get(target, prop) {
        if (Object.hasOwn(own, prop)) return own[prop];
        const value: unknown = Reflect.get(target, prop, target);
        if (typeof value !== 'function') return value;
        // Methods run on the persistence itself (the memory store keeps its state in private fields).
        const cached = bound.get(prop);
        if (cached?.[0] === value) return cached[1];
        const b = (value as (...a: unknown[]) => unknown).bind(target);
        bound.set(prop, [value, b]);
        return b;
      },
      // A later layer that wraps one of the bounded methods (store.x = wrap(store.x)) wraps the bounded one: writing
      // it to the inner store instead would make the bounded method call its own wrapper.
      set(target, prop, value) {
        if (!Object.hasOwn(own, prop)) return Reflect.set(target, prop, value, target);
        own[prop] = value;
        return true;
      },
    });
  }

  /**
   * Admits each subscription's copy if its client's queue has room, synchronously (so concurrent publishes cannot
   * both take the last place), then stores the admitted ones; what the persistence refuses is given back. The
   * persistence is called even when nothing is admitted: a message must take as many turns here as the one before
   * it, or it would overtake it, and Aedes drops a message that reaches a client after a later one as a duplicate.
   */
  private async enqueue(
    store: OutgoingStore,
    subs: Array<{ clientId: string }>,
    packet: QueuedPacket,
    put: (kept: Array<{ clientId: string }>) => Promise<unknown>,
  ): Promise<void> {
    const bytes = bytesOf(packet.payload);
    const kept = subs.length === 0 ? subs : this.admit(subs, packet, bytes);
    if (kept.length === 0) {
      await store.outgoingEnqueueCombi(kept, packet);
      return;
    }
    try {
      await put(kept);
    } catch (err) {
      for (const s of kept) this.release(s.clientId, 1, bytes);
      throw err;
    }
  }

  /**
   * A client named k times (overlapping filters: Aedes stores one copy per filter) takes k places, all or none:
   * a copy stored without its twin would let Aedes' clearing of the twin remove another message.
   */
  private admit(subs: Array<{ clientId: string }>, packet: QueuedPacket, bytes: number) {
    const copies = subs.length > 1 ? countCopies(subs) : undefined;
    const decided = copies && copies.size < subs.length ? new Map<string, boolean>() : undefined;
    let kept: Array<{ clientId: string }> | undefined;
    for (let i = 0; i < subs.length; i++) {
      const id = subs[i]!.clientId;
      let fits = decided?.get(id);
      if (fits === undefined) {
        fits = this.reserve(id, copies?.get(id) ?? 1, bytes, packet);
        decided?.set(id, fits);
      }
      if (!fits) kept ??= subs.slice(0, i);
      else kept?.push(subs[i]!);
    }
    return kept ?? subs;
  }

  private reserve(clientId: string, copies: number, bytes: number, packet: QueuedPacket): boolean {
    const l = this.ledgers.get(clientId);
    const messages = (l?.messages ?? 0) + copies;
    const total = (l?.bytes ?? 0) + copies * bytes;
    const { maxMessages, maxBytes } = this.limits;
    const over =
      maxMessages > 0 && messages > maxMessages ? 'messages' : maxBytes > 0 && total > maxBytes ? 'bytes' : undefined;
    if (over) {
      this.drop(clientId, l ?? this.ledger(clientId), over, packet);
      return false;
    }
    const ledger = l ?? this.ledger(clientId);
    ledger.messages = messages;
    ledger.bytes = total;
    this.total.messages += copies;
    this.total.bytes += copies * bytes;
    if (ledger.dropped > 0 && this.belowHalf(ledger)) this.endBurst(clientId, ledger);
    return true;
  }

  /** The first drop of a burst is logged at warn; the rest are counted until the queue is at most half full. */
  private drop(clientId: string, l: Ledger, reason: QueueDropReason, packet: QueuedPacket): void {
    this.dropped[reason]++;
    if (l.dropped++ === 0)
      this.o.log?.warn(
        {
          client: clientId,
          reason,
          queued: l.messages,
          queuedBytes: l.bytes,
          maxQueuedMessages: this.limits.maxMessages,
          maxQueuedBytes: this.limits.maxBytes,
        },
        'queue full: new messages for this client are dropped',
      );
    // Aedes delivers to a connected client after storing: that delivery must not go out (wasDropped).
    if (this.clients[clientId] === undefined) return;
    l.recent ??= new Set();
    l.recent.add(keyOf(packet));
    if (l.recent.size > RECENT_DROPS) l.recent.delete(l.recent.values().next().value!);
  }

  private endBurst(clientId: string, l: Ledger): void {
    this.o.log?.info({ client: clientId, dropped: l.dropped, queued: l.messages }, 'queue accepting again');
    l.dropped = 0;
  }

  private belowHalf(l: Ledger): boolean {
    const { maxMessages, maxBytes } = this.limits;
    return (maxMessages === 0 || l.messages * 2 <= maxMessages) && (maxBytes === 0 || l.bytes * 2 <= maxBytes);
  }

  /** A packet identifier assigned to a PUBLISH entry, or the entry turned into a PUBREL (its payload is gone). */
  private async update(store: OutgoingStore, client: { id: string }, packet: QueuedPacket): Promise<unknown> {
    const noted = packet.cmd === 'publish' ? this.takeNoted(client.id, packet) : undefined;
    const result = await store.outgoingUpdate(client, packet);
    const l = this.ledgers.get(client.id);
    if (!l || typeof packet.messageId !== 'number') return result;
    if (packet.cmd === 'pubrel') {
      const bytes = l.byMessageId?.get(packet.messageId);
      if (bytes !== undefined) {
        l.byMessageId!.delete(packet.messageId);
        this.release(client.id, 0, bytes);
      }
    } else if (packet.cmd === 'publish' && packet.payload !== undefined) {
      l.byMessageId ??= new Map();
      // A live delivery's payload may be the forward hook's (sealed); a stored one's is the stored payload.
      l.byMessageId.set(packet.messageId, noted ?? bytesOf(packet.payload));
    }
    return result;
  }

  private takeNoted(clientId: string, packet: QueuedPacket): number | undefined {
    const delivering = this.ledgers.get(clientId)?.delivering;
    if (!delivering) return undefined;
    const key = keyOf(packet);
    const noted = delivering.get(key);
    if (noted !== undefined) delivering.delete(key);
    return noted;
  }

  /** The entry the persistence removed, if any, leaves the ledger; a message dropped here was never stored. */
  private async clear(
    store: OutgoingStore,
    client: { id: string },
    packet: QueuedPacket,
  ): Promise<QueuedPacket | undefined> {
    // Aedes clears a live delivery it did not send by its key, without a packet identifier: for a message this
    // bound dropped there is nothing to clear, and the persistence would remove another entry without one.
    if (packet.messageId === undefined && this.ledgers.get(client.id)?.recent?.has(keyOf(packet))) return undefined;
    const removed = await store.outgoingClearMessageId(client, packet);
    if (!removed) return removed;
    let bytes = 0;
    if (removed.cmd === 'publish') {
      bytes = bytesOf(removed.payload);
      if (typeof removed.messageId === 'number') this.ledgers.get(client.id)?.byMessageId?.delete(removed.messageId);
    }
    this.release(client.id, 1, bytes);
    return removed;
  }

  private release(clientId: string, messages: number, bytes: number): void {
    const l = this.ledgers.get(clientId);
    if (!l) return;
    const m = Math.min(messages, l.messages);
    // An empty queue holds no bytes: whatever an identifier collision left over is given back here.
    const b = l.messages - m === 0 ? l.bytes : Math.min(bytes, l.bytes);
    l.messages -= m;
    l.bytes -= b;
    this.total.messages -= m;
    this.total.bytes -= b;
    if (l.dropped > 0 && this.belowHalf(l)) this.endBurst(clientId, l);
    if (l.messages === 0 && l.dropped === 0) this.ledgers.delete(clientId);
  }

  /** Whether this live delivery is of a message dropped for this client (so not in its queue). */
  private wasDropped(client: Client, packet: AedesPublishPacket): boolean {
    if (client.clean !== false || packet.messageId !== undefined) return false;
    const recent = this.ledgers.get(client.id)?.recent;
    return recent !== undefined && recent.has(keyOf(packet as QueuedPacket));
  }

  private ledger(clientId: string): Ledger {
    const l = new Ledger();
    this.ledgers.set(clientId, l);
    return l;
  }
}

/** Aedes identifies a message across its copies by the broker that created it and that broker's counter. */
function keyOf(packet: QueuedPacket): string {
  return `${packet.brokerId ?? ''}\n${packet.brokerCounter ?? ''}`;
}

function bytesOf(payload: Buffer | string | undefined): number {
  return payload === undefined ? 0 : typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
}

function countCopies(subs: Array<{ clientId: string }>): Map<string, number> {
  const copies = new Map<string, number>();
  for (const s of subs) copies.set(s.clientId, (copies.get(s.clientId) ?? 0) + 1);
  return copies;
}
