// An application connection's deliveries that need a session key it does not hold yet, or one to replace a key past
// its rotation limits, held until it announces one (docs/PROTOCOL.md §22.6, §22.8): stored ones stay in the store,
// live ones wait in order, none goes out in plaintext and none is dropped for want of a key while the hold lasts.
import { Readable } from 'node:stream';
import type { AedesPublishPacket, Client } from 'aedes';
import { deliveryFor } from '../policy/evaluate.js';
import { mayReceive } from '../topic-policy.js';
import type { ClientState, PluginContext } from './context.js';
import { tellAppToRotate } from './app-session.js';
import { type Deliver, gateDeliveries } from './delivery-gate.js';
import { deliveryOutcome, ruleOf } from './policy.js';

/** How long, and how many live deliveries (and their payload bytes), a hold may keep waiting for the announcement. */
export interface AppHoldLimits {
  ms: number;
  count: number;
  bytes: number;
}

export const DEFAULT_APP_HOLD: Readonly<AppHoldLimits> = { ms: 30_000, count: 1000, bytes: 16 * 1024 * 1024 };

/**
 * What one delivery asks of the app's session key: nothing (`plain`: passed, dropped by policy, or empty), a seal
 * the newest key can make now (`sealable`), or a key the app does not hold (`needs-key`).
 */
export type KeyNeed = 'plain' | 'sealable' | 'needs-key';
type Classify = (packet: { topic: string; payload: Buffer }) => KeyNeed;

/** What the hold reports: its end, for the log line, and each delivery lost for want of a key. */
interface HoldReport {
  end(outcome: 'open' | 'expired' | 'closed', held: number, leftStored: number, dropped: number): void;
  dropped(): void;
}

const noop = () => undefined;
interface StoredPacket {
  cmd?: string;
  topic?: string;
  payload?: Buffer;
}
/** What became of a stored message handed to Aedes: sent on (or refused for good), or deferred for want of a key. */
type Forwarded = 'done' | 'deferred';

/**
 * `idle`: nothing needed a key yet, everything passes; `holding`: a delivery needed a key and the announcement is
 * awaited; `open`: announced, everything passes (the forward hook seals) until a delivery finds the key spent, which
 * holds again; `expired`: the hold ran out, what needs a key is left where it is (stored) and the rest passes until
 * the next announcement; `closed`: the connection ended.
 */
type Phase = 'idle' | 'holding' | 'open' | 'expired' | 'closed';

/**
 * One per application connection, made at CONNECT: Aedes binds a subscription to the client's delivery functions
 * when it is made, so only a gate in place before any SUBSCRIBE sees every delivery.
 *
 * Live deliveries: a delivery is classified and handed to the forward hook (which seals) in one synchronous step,
 * so what passes can be sealed. None overtakes another: Aedes drops a live delivery older than one it already sent
 * to the client (its `dedupe`), so a delivery held is followed by every later one until the hold is flushed.
 *
 * The stored queue: Aedes sends it right after CONNACK, before the app can have announced its key, through a forward
 * hook that cannot wait, and clears what that hook refuses. So it is read through `storedQueue`, one message at a
 * time: each waits for the announcement if it needs a key, and the next is read only once the forward hook has had
 * it. If the hook could not seal it after all (the app's own publishes or the key's age used the key up between the
 * look and the seal), it is deferred: kept in the store, and handed to Aedes again under the next key, in its place.
 */
export class AppDeliveryHold {
  private phase: Phase = 'idle';
  private readonly waiting: Array<{ packet: AedesPublishPacket; deliver: Deliver; cb: () => void; stored: boolean }> =
    [];
  private readonly settledWaiters: Array<() => void> = [];
  /**
   * Aedes is still sending the stored queue (its connect handler ends with it, then emits `connected`): live
   * deliveries held go out only after it, so they cannot overtake what was queued before them. Every forward-hook
   * call for this client meanwhile is a stored message's.
   */
  private reading = true;
  private timer: NodeJS.Timeout | undefined;
  /** Counted for the log line when the hold ends. */
  private held = 0;
  /** Payload bytes of the live deliveries waiting now. */
  private heldBytes = 0;
  private leftStored = 0;
  private dropped = 0;
  /** The stored message handed to Aedes whose forward-hook call the queue reader awaits. */
  private inFlight: ((outcome: Forwarded) => void) | undefined;
  /**
   * That message's payload: what a failed store update is matched by (Aedes' packet for it, made from what the
   * reader yielded, carries the same Buffer; a PUBREL carries none).
   */
  private inFlightPayload: Buffer | undefined;
  /** The forward hook could not seal the message in flight: this packet (identifier and all) goes again. */
  private deferredPacket: AedesPublishPacket | undefined;
  /** Stored messages deferred: not cleared from the store when the hook refuses them (holdForAppKey). */
  private readonly keep = new WeakSet<object>();

  constructor(
    private readonly classify: Classify,
    private readonly limits: Readonly<AppHoldLimits>,
    private readonly report: HoldReport,
    /** Does the store keep this connection's QoS 1/2 deliveries (clean session 0)? */
    private readonly persistent: boolean,
  ) {}

  /** Wraps the client's two delivery functions (live, and Aedes' retained) with the hold, at CONNECT. */
  gate(client: Client): void {
    gateDeliveries(client, (packet, deliver, cb, viaQoS) =>
      this.deliver(packet, deliver, cb, viaQoS && this.persistent && !packet.retain),
    );
    // Aedes emits `connected` once the stored queue has been sent (its connect handler's last step).
    client.once('connected', () => {
      this.reading = false;
      if (this.phase !== 'holding') this.flush();
    });
  }

  private needs(packet: { topic: string; payload: Buffer }): boolean {
    return this.classify(packet) === 'needs-key';
  }

  /**
   * @param stored a QoS 1/2 copy of this delivery is in the session's store (a persistent session's live delivery on a
   * QoS 1/2 subscription, not a retained one): left undelivered, it goes out on a later connection.
   */
  private deliver(packet: AedesPublishPacket, deliver: Deliver, cb: () => void, stored: boolean): void {
    const p = this.phase;
    if (p === 'closed') return void setImmediate(cb);
    const needs = this.needs(packet as { topic: string; payload: Buffer });
    const behind = this.reading || this.waiting.length > 0;
    if (p === 'expired' && !behind) return needs ? this.leave(stored, cb) : deliver(packet, cb);
    const passing = p === 'idle' || p === 'open';
    if (passing && !needs && !behind) return deliver(packet, cb);
    if (passing && needs) this.engage();
    const size = (packet.payload as Buffer).length;
    // Beyond the hold's bounds nothing is held, and nothing may overtake what is: left (stored, or lost and counted).
    if (this.waiting.length >= this.limits.count || this.heldBytes + size > this.limits.bytes)
      return this.leave(stored, cb);
    this.held++;
    this.heldBytes += size;
    // Aedes' router waits for each subscriber's callback before the publish completes (and its publisher gets its
    // PUBACK), within a bound on deliveries in flight for the whole broker: a delivery held here answers at once, so
    // an app that is slow to announce delays no publisher and fills no shared bound. What is held is this hold's own,
    // within its count and bytes; a persistent session's QoS 1/2 copy stays in the store until it is written.
    setImmediate(cb);
    this.waiting.push({ packet, deliver, cb: noop, stored });
  }

  /**
   * A delivery left undelivered: a persistent session's QoS 1/2 copy was stored before Aedes delivered it and was
   * never touched, so it goes out on a later connection; any other (a clean session's, QoS 0, retained) is lost and
   * counted.
   */
  private leave(stored: boolean, cb: () => void): void {
    if (stored) this.leftStored++;
    else {
      this.dropped++;
      this.report.dropped();
    }
    setImmediate(cb);
  }

  private engage(): void {
    if (this.phase !== 'idle' && this.phase !== 'open') return;
    this.phase = 'holding';
    this.timer = setTimeout(() => this.settle('expired'), this.limits.ms).unref();
  }

  /** The app announced a session key: the stored queue goes on, then the live deliveries held, in order. */
  open(): void {
    if (this.phase === 'closed' || this.phase === 'open') return;
    this.settle('open');
  }

  /** The connection ended: nothing held is delivered; the store keeps what it holds. */
  close(): void {
    if (this.phase !== 'closed') this.settle('closed');
  }

  private settle(phase: 'open' | 'expired' | 'closed'): void {
    const was = this.phase;
    this.phase = phase;
    clearTimeout(this.timer);
    if (phase === 'expired' && !this.reading) this.flush(); // what expiry drops is counted in its report
    if (was === 'holding' || (phase === 'closed' && this.held + this.leftStored + this.dropped > 0)) {
      this.report.end(phase, this.held, this.leftStored, this.dropped);
      this.held = this.leftStored = this.dropped = 0;
    }
    if (phase === 'closed') this.forwarded();
    for (const w of this.settledWaiters.splice(0)) w();
    if (!this.reading && phase !== 'expired') this.flush();
  }

  /**
   * Hands the live deliveries held on, in arrival order, once the stored queue has gone before them. One that finds
   * the new key spent already (more were held than one key may seal) holds the rest again.
   */
  private flush(): void {
    while (this.waiting.length > 0) {
      const { packet, deliver, cb, stored } = this.waiting[0]!;
      const needs = this.phase !== 'closed' && this.needs(packet as { topic: string; payload: Buffer });
      if (this.phase === 'open' && needs) return this.engage();
      this.waiting.shift();
      this.heldBytes -= (packet.payload as Buffer).length;
      if (this.phase === 'closed') setImmediate(cb);
      else if (this.phase === 'expired' && needs) this.leave(stored, cb);
      else deliver(packet, cb);
    }
  }

  /** A method, not a field read: the phase changes across the reader's awaits, which narrowing cannot see. */
  private isClosed(): boolean {
    return this.phase === 'closed';
  }

  private whenSettled(): Promise<void> {
    if (this.phase !== 'holding' && this.phase !== 'idle') return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }

  /**
   * The forward hook could not seal this stored message (sealForApp): it stays in the store, and the queue reader
   * hands it to Aedes again under the next key. Only while the stored queue is being sent; false otherwise.
   */
  defer(packet: AedesPublishPacket): boolean {
    if (!this.reading || !this.inFlight) return false;
    this.deferredPacket = packet;
    this.keep.add(packet);
    return true;
  }

  /**
   * The forward hook has had the stored message in flight (called after every forward-hook call for this client):
   * the queue reader goes on.
   */
  forwarded(): void {
    const resolve = this.inFlight;
    if (!resolve) return;
    this.inFlight = this.inFlightPayload = undefined;
    resolve(this.deferredPacket ? 'deferred' : 'done');
  }

  /** A store update failed; if it was the stored message in flight's, it never reaches the forward hook: go on. */
  updateFailed(packet: { payload?: unknown }): void {
    if (this.inFlightPayload !== undefined && packet.payload === this.inFlightPayload) this.forwarded();
  }

  /** Asked by the store's outgoingClearMessageId (holdForAppKey): is this one to stay stored? Once. */
  keeps(packet: object): boolean {
    return this.keep.delete(packet);
  }

  /**
   * Waits for the next announcement while `item` needs a key the app does not hold (also when a live delivery made
   * the hold wait first); its need once that settles: `needs-key` only after expiry or close.
   */
  private async keyFor(item: { topic: string; payload: Buffer }): Promise<KeyNeed> {
    let need = this.classify(item);
    while (need === 'needs-key' && this.phase !== 'expired' && this.phase !== 'closed') {
      this.engage();
      await this.whenSettled();
      if (this.isClosed()) return need;
      need = this.classify(item);
    }
    return need;
  }

  /**
   * The session's stored queue as Aedes' connect handler reads it, one message at a time, in order: each waits for
   * the announcement while it needs a key (the app is told to rotate), goes to Aedes, and the next is read once the
   * forward hook has had it; one the hook deferred goes again after the next announcement. On expiry what needs the
   * key is skipped (it stays stored, identifier and all, for the next connection); on close the read fails (so that
   * Aedes does not go on to mark the closed client connected) and the store keeps the rest.
   */
  storedQueue(source: Readable): Readable {
    const gen = async function* (this: AppDeliveryHold) {
      try {
        for await (const item of source) {
          const stored = item as StoredPacket;
          if (stored.cmd !== 'publish' && stored.cmd !== undefined) {
            yield item; // a PUBREL of a QoS 2 flow: no forward hook, no key
            continue;
          }
          let packet: object = item;
          for (;;) {
            const p = packet as { topic?: string; payload?: Buffer };
            const need = await this.keyFor({ topic: p.topic ?? '', payload: p.payload ?? Buffer.alloc(0) });
            if (this.isClosed()) throw closedDuringQueue();
            if (need === 'needs-key') {
              this.leftStored++; // expired: it stays stored for the next connection
              break;
            }
            const forwarded = new Promise<Forwarded>((resolve) => (this.inFlight = resolve));
            this.inFlightPayload = p.payload;
            yield packet;
            const outcome = await forwarded;
            if (this.isClosed()) throw closedDuringQueue();
            if (outcome === 'done') break;
            packet = this.deferredPacket!;
            this.deferredPacket = undefined;
          }
        }
      } finally {
        this.inFlight = this.inFlightPayload = undefined;
        source.destroy();
      }
    }.call(this);
    return Readable.from(gen, { objectMode: true, highWaterMark: 1 });
  }
}

function closedDuringQueue(): Error {
  return new Error('the connection closed while its stored queue was being sent');
}

/**
 * What this delivery asks of the app's session key (KeyNeed). With a session: a delivery the policy leaves to the
 * forward hook is sealed, and needs the key when the newest is past its rotation limits, this delivery's bytes
 * included (§22.6). Before one, for a persistent session: the policy would drop it for want of a key and accept it
 * sealed (§22.8); a clean session's is dropped by the policy as before, as it has no queue to wait in.
 */
export function keyNeedOf(
  ctx: PluginContext,
  state: ClientState,
  persistent: boolean,
  topic: string,
  payload: Buffer,
): KeyNeed {
  // An application that holds no key and has no queue to wait in (most) pays this one check per delivery.
  if (!state.app?.active && (!persistent || ctx.policy.current.size === 0)) return 'plain';
  if (!mayReceive(state.principal, topic, ctx.topics)) return 'plain';
  if (state.app?.active) {
    if (payload.length === 0 || deliveryOutcome(ctx, state, topic, payload).outcome !== 'as-usual') return 'plain';
    return state.app.canSeal(payload.length) ? 'sealable' : 'needs-key';
  }
  const rule = ruleOf(ctx, state.principal, topic);
  const waitsForKey =
    deliveryFor(rule, 'app', payload.length, 0, false) === 'encryption' &&
    deliveryFor(rule, 'app', payload.length, 0, true) !== 'encryption';
  return waitsForKey ? 'needs-key' : 'plain';
}

interface QueueStore {
  outgoingStream(client: Client): Readable;
  outgoingUpdate(client: Client, packet: object): Promise<unknown>;
  outgoingClearMessageId(client: Client, packet: object): Promise<unknown>;
}
const INTERCEPTED = Symbol('qkey.appQueueHold');

/**
 * Puts a hold on an application connection at CONNECT: its deliveries gated, its stored queue read through the
 * hold, and what the forward hook deferred kept in the store. The persistence is intercepted once, for the clients
 * holding one. A delivery held for a spent key tells the app to rotate, if the seal that spent it did not already.
 */
export function holdForAppKey(ctx: PluginContext, client: Client, state: ClientState, limits: AppHoldLimits): void {
  const persistent = client.clean === false;
  const hold = new AppDeliveryHold(
    (p) => {
      const need = keyNeedOf(ctx, state, persistent, p.topic, p.payload);
      if (need === 'needs-key' && state.app?.active) tellAppToRotate(ctx, client, state, p.payload.length);
      return need;
    },
    limits,
    {
      end: (outcome, held, leftStored, dropped) => {
        if (outcome === 'open' && leftStored + dropped === 0) return;
        ctx.o.log?.info({ client: client.id, outcome, held, leftStored, dropped }, 'app session hold ended');
      },
      dropped: () => ctx.o.events?.downlink?.('dropped_no_key'),
    },
    persistent,
  );
  state.appHold = hold;
  hold.gate(client);
  const store = (client as unknown as { broker: { persistence: QueueStore & { [INTERCEPTED]?: true } } }).broker
    .persistence;
  if (store[INTERCEPTED]) return;
  const holdOf = (c: Client) => ctx.states.get(c)?.appHold;
  const read = store.outgoingStream.bind(store);
  store.outgoingStream = (c: Client) => {
    const h = holdOf(c);
    return h ? h.storedQueue(read(c)) : read(c);
  };
  const update = store.outgoingUpdate.bind(store);
  // A stored message whose update failed never reaches the forward hook (Aedes' emptyQueueFilter): the reader goes on.
  store.outgoingUpdate = (c: Client, packet: object) =>
    update(c, packet).catch((err: unknown) => {
      holdOf(c)?.updateFailed(packet);
      throw err;
    });
  const clear = store.outgoingClearMessageId.bind(store);
  // Aedes clears a stored message the forward hook refused; one refused only for want of a key stays.
  store.outgoingClearMessageId = (c: Client, packet: object) =>
    holdOf(c)?.keeps(packet) ? Promise.resolve(packet) : clear(c, packet);
  store[INTERCEPTED] = true;
}
