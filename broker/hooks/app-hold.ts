// An application connection's deliveries that need a session key it does not hold yet, or one to replace a key past
// its rotation limits, held until it announces one (docs/PROTOCOL.md §22.6, §22.8): stored ones stay in the store,
// live ones wait in order, none goes out in plaintext and none is dropped for want of a key while the hold lasts.
import { Readable } from 'node:stream';
import type { AedesPublishPacket, Client } from 'aedes';
import type { SealsAhead } from '../app-session-keys.js';
import { deliveryFor } from '../policy/evaluate.js';
import { mayReceive } from '../topic-policy.js';
import type { ClientState, PluginContext } from './context.js';
import { tellAppToRotate } from './app-session.js';
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
 * the key can still make after the seals `ahead` of it (`sealable`), or a key the app does not hold (`needs-key`).
 */
export type KeyNeed = 'plain' | 'sealable' | 'needs-key';
type Classify = (packet: { topic: string; payload: Buffer }, ahead: Readonly<SealsAhead>) => KeyNeed;

/** What the hold reports: its end, for the log line, and each delivery lost for want of a key. */
interface HoldReport {
  end(outcome: 'open' | 'expired' | 'closed', held: number, leftStored: number, dropped: number): void;
  dropped(): void;
}

type Deliver = (packet: AedesPublishPacket, cb: () => void) => void;
const noop = () => undefined;
interface DeliveringClient {
  deliver0: Deliver;
  deliverQoS: Deliver;
}
interface StoredPacket {
  cmd?: string;
  topic?: string;
  payload?: Buffer;
  messageId?: number;
  dup?: boolean;
  qos?: number;
}

/**
 * `idle`: nothing needed a key yet, everything passes; `holding`: a delivery needed a key and the announcement is
 * awaited; `open`: announced, everything passes (the forward hook seals) until a delivery finds the key spent, which
 * holds again; `expired`: the hold ran out, what needs a key is left where it is (stored) and the rest passes until
 * the next announcement; `closed`: the connection ended.
 */
type Phase = 'idle' | 'holding' | 'open' | 'expired' | 'closed';

/**
 * One per application connection, made at CONNECT: Aedes binds a subscription to the client's delivery functions
 * when it is made, so only a gate in place before any SUBSCRIBE sees every delivery. Aedes sends a persistent
 * session's stored queue right after CONNACK, before the app can have announced its key, through a forward hook that
 * cannot wait and a queue reader that clears what the hook refuses; so the queue itself is read through
 * `storedQueue`, which stops at the first message the key cannot seal, and the delivery functions are gated here for
 * live ones. A live delivery is classified and handed to the forward hook in one synchronous step; the queue reader
 * runs ahead of the hook (Aedes' pipeline buffers), so what it let through and the hook has yet to seal is counted
 * as `ahead`, and a message passes only if the key can seal it after all of those.
 */
export class AppDeliveryHold {
  private phase: Phase = 'idle';
  private readonly waiting: Array<{ packet: AedesPublishPacket; deliver: Deliver; cb: () => void }> = [];
  private readonly settledWaiters: Array<() => void> = [];
  /**
   * Aedes is still sending the stored queue (its connect handler ends with it, then emits `connected`): live
   * deliveries held go out only after it, so they cannot overtake what was queued before them.
   */
  private reading = true;
  private timer: NodeJS.Timeout | undefined;
  /** Counted for the log line when the hold ends. */
  private held = 0;
  /** Payload bytes of the live deliveries waiting now. */
  private heldBytes = 0;
  private leftStored = 0;
  private dropped = 0;
  /** Plaintexts the queue reader let through that the forward hook has not sealed yet, and their bytes. */
  private readonly ahead = new Set<Buffer>();
  private aheadBytes = 0;
  /** Stored messages the key could not seal after all: not cleared from the store (holdForAppKey). */
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
    const c = client as unknown as DeliveringClient;
    const wrap =
      (deliver: Deliver): Deliver =>
      (packet, cb) =>
        this.deliver(packet, deliver, cb);
    c.deliver0 = wrap(c.deliver0);
    c.deliverQoS = wrap(c.deliverQoS);
    // Aedes emits `connected` once the stored queue has been sent (its connect handler's last step).
    client.once('connected', () => {
      this.reading = false;
      this.ahead.clear();
      this.aheadBytes = 0;
      if (this.phase !== 'holding') this.flush();
    });
  }

  private needs(packet: { topic: string; payload: Buffer }): boolean {
    return this.classify(packet, { messages: this.ahead.size, bytes: this.aheadBytes }) === 'needs-key';
  }

  /** The forward hook reached this plaintext (sealed it, or found it could not). */
  forwarded(plaintext: Buffer): void {
    if (this.ahead.delete(plaintext)) this.aheadBytes -= plaintext.length;
  }

  /**
   * The forward hook could not seal this delivery after all (a key past its age between the queue read and the
   * seal): a persistent session's QoS 1/2 copy stays in the store for the next connection; anything else is lost.
   */
  unsealable(packet: AedesPublishPacket): void {
    if (this.persistent && packet.qos > 0) {
      this.keep.add(packet);
      this.leftStored++;
    } else this.lose();
  }

  /** Asked by the store's outgoingClearMessageId (holdForAppKey): is this one to stay stored? Once. */
  keeps(packet: object): boolean {
    return this.keep.delete(packet);
  }

  private deliver(packet: AedesPublishPacket, deliver: Deliver, cb: () => void): void {
    const p = this.phase;
    if (p === 'closed') return void setImmediate(cb);
    const needs = this.needs(packet as { topic: string; payload: Buffer });
    if (p === 'expired') return needs ? this.leave(packet, cb) : deliver(packet, cb);
    const passing = p === 'idle' || p === 'open';
    if (passing && !needs && !this.reading && this.waiting.length === 0) return deliver(packet, cb);
    if (passing && needs) this.engage();
    const size = (packet.payload as Buffer).length;
    if (this.waiting.length >= this.limits.count || this.heldBytes + size > this.limits.bytes)
      return needs ? this.leave(packet, cb) : deliver(packet, cb);
    this.held++;
    this.heldBytes += size;
    // Aedes' router waits for each subscriber's callback before the publish completes (and its publisher gets its
    // PUBACK), within a bound on deliveries in flight for the whole broker: a delivery held here answers at once, so
    // an app that is slow to announce delays no publisher and fills no shared bound. What is held is this hold's own,
    // within its count and bytes; a persistent session's QoS 1/2 copy stays in the store until it is written.
    setImmediate(cb);
    this.waiting.push({ packet, deliver, cb: noop });
  }

  /**
   * A delivery left undelivered: a persistent session's QoS 1/2 copy was stored before Aedes delivered it and was
   * never touched, so it goes out on a later connection; a clean session's, or a QoS 0 one, is lost and counted.
   */
  private leave(packet: { qos?: number }, cb: () => void): void {
    if (this.persistent && (packet.qos ?? 0) > 0) this.leftStored++;
    else this.lose();
    setImmediate(cb);
  }

  private lose(): void {
    this.dropped++;
    this.report.dropped();
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
    if (phase === 'closed') {
      this.ahead.clear();
      this.aheadBytes = 0;
    }
    for (const w of this.settledWaiters.splice(0)) w();
    if (!this.reading && phase !== 'expired') this.flush();
  }

  /**
   * Hands the live deliveries held on, in arrival order, once the stored queue has gone before them. One that finds
   * the new key spent already (more were held than one key may seal) holds the rest again.
   */
  private flush(): void {
    while (this.waiting.length > 0) {
      const { packet, deliver, cb } = this.waiting[0]!;
      const needs = this.phase !== 'closed' && this.needs(packet as { topic: string; payload: Buffer });
      if (this.phase === 'open' && needs) return this.engage();
      this.waiting.shift();
      this.heldBytes -= (packet.payload as Buffer).length;
      if (this.phase === 'closed') setImmediate(cb);
      else if (this.phase === 'expired' && needs) this.leave(packet, cb);
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
   * The session's stored queue as Aedes' connect handler reads it: messages pass in order while the key can seal
   * each after those already let through; at the first it cannot, the reader waits for the next announcement (the
   * app is told to rotate). On expiry what needs the key is skipped (it stays stored, identifier and all, for the
   * next connection); on close the reader ends and the store keeps the rest.
   */
  storedQueue(source: Readable): Readable {
    const gen = async function* (this: AppDeliveryHold) {
      try {
        for await (const item of source) {
          const packet = item as StoredPacket;
          if (packet.cmd === 'publish' || packet.cmd === undefined) {
            const p = { topic: packet.topic ?? '', payload: packet.payload ?? Buffer.alloc(0) };
            const ahead = () => ({ messages: this.ahead.size, bytes: this.aheadBytes });
            let need = this.classify(p, ahead());
            // A new key may be spent again by the seals still ahead of this one: wait for the next, as often as it takes.
            while (need === 'needs-key' && (this.phase === 'idle' || this.phase === 'open')) {
              this.engage();
              await this.whenSettled();
              if (this.isClosed()) return;
              need = this.classify(p, ahead());
            }
            if (this.isClosed()) return;
            if (need === 'needs-key') {
              this.leftStored++; // expired
              continue;
            }
            if (need === 'sealable' && !this.ahead.has(p.payload)) {
              this.ahead.add(p.payload);
              this.aheadBytes += p.payload.length;
            }
          }
          yield item;
        }
      } finally {
        source.destroy();
      }
    }.call(this);
    return Readable.from(gen, { objectMode: true, highWaterMark: 1 });
  }
}

/**
 * What this delivery asks of the app's session key (KeyNeed). With a session: a delivery the policy leaves to the
 * forward hook is sealed, and needs the key when the newest is past its rotation limits after the seals `ahead`
 * (§22.6). Before one, for a persistent session: the policy would drop it for want of a key and accept it sealed
 * (§22.8); a clean session's is dropped by the policy as before, as it has no queue to wait in.
 */
export function keyNeedOf(
  ctx: PluginContext,
  state: ClientState,
  persistent: boolean,
  topic: string,
  payload: Buffer,
  ahead: Readonly<SealsAhead>,
): KeyNeed {
  // An application that holds no key and has no queue to wait in (most) pays this one check per delivery.
  if (!state.app?.active && (!persistent || ctx.policy.current.size === 0)) return 'plain';
  if (!mayReceive(state.principal, topic, ctx.topics)) return 'plain';
  if (state.app?.active) {
    if (payload.length === 0 || deliveryOutcome(ctx, state, topic, payload).outcome !== 'as-usual') return 'plain';
    return state.app.canSeal(ahead) ? 'sealable' : 'needs-key';
  }
  const rule = ruleOf(ctx, state.principal, topic);
  const waitsForKey =
    deliveryFor(rule, 'app', payload.length, 0, false) === 'encryption' &&
    deliveryFor(rule, 'app', payload.length, 0, true) !== 'encryption';
  return waitsForKey ? 'needs-key' : 'plain';
}

interface QueueStore {
  outgoingStream(client: Client): Readable;
  outgoingClearMessageId(client: Client, packet: object): Promise<unknown>;
}
const INTERCEPTED = Symbol('qkey.appQueueHold');

/**
 * Puts a hold on an application connection at CONNECT: its deliveries gated, its stored queue read through the
 * hold, and what the forward hook could not seal for a persistent session kept in the store. The persistence is
 * intercepted once, for the clients holding one. A delivery held for a spent key tells the app to rotate, if the
 * seal that spent it did not already.
 */
export function holdForAppKey(ctx: PluginContext, client: Client, state: ClientState, limits: AppHoldLimits): void {
  const persistent = client.clean === false;
  const hold = new AppDeliveryHold(
    (p, ahead) => {
      const need = keyNeedOf(ctx, state, persistent, p.topic, p.payload, ahead);
      if (need === 'needs-key' && state.app?.active) tellAppToRotate(ctx, client, state, ahead);
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
  const read = store.outgoingStream.bind(store);
  store.outgoingStream = (c: Client) => {
    const h = ctx.states.get(c)?.appHold;
    return h ? h.storedQueue(read(c)) : read(c);
  };
  const clear = store.outgoingClearMessageId.bind(store);
  // Aedes clears a stored message the forward hook refused; one refused only for want of a key stays.
  store.outgoingClearMessageId = (c: Client, packet: object) =>
    ctx.states.get(c)?.appHold?.keeps(packet) ? Promise.resolve(packet) : clear(c, packet);
  store[INTERCEPTED] = true;
}
