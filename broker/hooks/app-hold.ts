// An application connection's deliveries that need a session key it does not hold yet, or one to replace a key past
// its rotation limits, held until it announces one (docs/PROTOCOL.md §22.6, §22.8): stored ones stay in the store,
// live ones wait in order, none goes out in plaintext and none is dropped for want of a key while the hold lasts.
import { Readable } from 'node:stream';
import type { AedesPublishPacket, Client } from 'aedes';
import { deliveryFor } from '../policy/evaluate.js';
import { mayReceive } from '../topic-policy.js';
import type { ClientState, PluginContext } from './context.js';
import { tellAppToRotate } from './app-session.js';
import { ruleOf } from './policy.js';

/** How long, and how many live deliveries (and their payload bytes), a hold may keep waiting for the announcement. */
export interface AppHoldLimits {
  ms: number;
  count: number;
  bytes: number;
}

export const DEFAULT_APP_HOLD: Readonly<AppHoldLimits> = { ms: 30_000, count: 1000, bytes: 16 * 1024 * 1024 };

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
}

/**
 * `idle`: nothing needed a key yet, everything passes; `holding`: a delivery needed a key and the announcement is
 * awaited; `open`: announced, everything passes (the forward hook seals) until a delivery finds the key spent, which
 * holds again; `expired`: the hold ran out, what needs a key is left where it is (stored) and the rest passes until
 * the next announcement; `closed`: the connection ended.
 */
type Phase = 'idle' | 'holding' | 'open' | 'expired' | 'closed';

/**
 * One per persistent application connection. Aedes sends the stored queue right after CONNACK, before the app can
 * have announced its key, through a forward hook that cannot wait and a queue reader that clears what the hook
 * refuses; so the queue itself is read through `storedQueue`, which stops at the first message that needs the key,
 * and the client's delivery functions are gated here for live ones.
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

  constructor(
    private readonly needsKey: (packet: { topic: string; payload: Buffer }) => boolean,
    private readonly limits: Readonly<AppHoldLimits>,
    private readonly onEnd: (outcome: 'open' | 'expired' | 'closed', held: number, leftStored: number) => void,
  ) {}

  /**
   * Wraps the client's two delivery functions (live, and Aedes' retained) with the hold. `readingQueue`: Aedes has
   * yet to send the session's stored queue (a hold made at CONNECT); false for one made later, on a live connection.
   */
  gate(client: Client, readingQueue = true): void {
    this.reading = readingQueue;
    const c = client as unknown as DeliveringClient;
    const wrap =
      (deliver: Deliver): Deliver =>
      (packet, cb) =>
        this.deliver(packet, deliver, cb);
    c.deliver0 = wrap(c.deliver0);
    c.deliverQoS = wrap(c.deliverQoS);
    client.once('connected', () => {
      this.reading = false;
      if (this.phase !== 'holding') this.flush();
    });
  }

  private deliver(packet: AedesPublishPacket, deliver: Deliver, cb: () => void): void {
    const p = this.phase;
    if (p === 'closed') return void setImmediate(cb);
    const needs = this.needsKey(packet as { topic: string; payload: Buffer });
    if (p === 'expired') return needs ? this.leave(cb) : deliver(packet, cb);
    const passing = p === 'idle' || p === 'open';
    if (passing && !needs && !this.reading && this.waiting.length === 0) return deliver(packet, cb);
    if (passing && needs) this.engage();
    const size = (packet.payload as Buffer).length;
    if (this.waiting.length >= this.limits.count || this.heldBytes + size > this.limits.bytes)
      return needs ? this.leave(cb) : deliver(packet, cb);
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
   * never touched, so it goes out on a later connection; a QoS 0 one is lost, as QoS 0 allows.
   */
  private leave(cb: () => void): void {
    this.leftStored++;
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
    if (was === 'holding' || (phase === 'closed' && this.held + this.leftStored > 0)) {
      this.onEnd(phase, this.held, this.leftStored);
      this.held = this.leftStored = 0;
    }
    for (const w of this.settledWaiters.splice(0)) w();
    if (!this.reading) this.flush();
  }

  /**
   * Hands the live deliveries held on, in arrival order, once the stored queue has gone before them. One that finds
   * the new key spent already (more were held than one key may seal) holds the rest again.
   */
  private flush(): void {
    while (this.waiting.length > 0) {
      const { packet, deliver, cb } = this.waiting[0]!;
      const needs = this.phase !== 'closed' && this.needsKey(packet as { topic: string; payload: Buffer });
      if (this.phase === 'open' && needs) return this.engage();
      this.waiting.shift();
      this.heldBytes -= (packet.payload as Buffer).length;
      if (this.phase === 'closed') setImmediate(cb);
      else if (this.phase === 'expired' && needs) this.leave(cb);
      else deliver(packet, cb);
    }
  }

  private whenSettled(): Promise<void> {
    if (this.phase !== 'holding' && this.phase !== 'idle') return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }

  /**
   * The session's stored queue as Aedes' connect handler reads it: messages pass in order until one needs the key;
   * from there on the reader waits for the announcement. On expiry what needs the key is skipped (it stays stored,
   * identifier and all, for the next connection); on close the reader ends and the store keeps the rest.
   */
  storedQueue(source: Readable): Readable {
    const gen = async function* (this: AppDeliveryHold) {
      try {
        for await (const item of source) {
          const packet = item as StoredPacket;
          if (packet.cmd === 'publish' || packet.cmd === undefined) {
            const p = { topic: packet.topic ?? '', payload: packet.payload ?? Buffer.alloc(0) };
            if ((this.phase === 'idle' || this.phase === 'open') && this.needsKey(p)) this.engage();
            if (this.phase === 'holding') await this.whenSettled();
            if (this.phase === 'closed') return;
            if (this.phase === 'expired' && this.needsKey(p)) {
              this.leftStored++;
              continue;
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
 * Does this delivery need a session key the app does not hold? With a session: it would be sealed and the newest
 * key is past its rotation limits (§22.6). Before one: the policy would drop it for want of a key, and accept it
 * sealed (§22.8).
 */
export function needsAppKey(ctx: PluginContext, state: ClientState, topic: string, length: number): boolean {
  if (!mayReceive(state.principal, topic, ctx.topics)) return false;
  if (state.app?.active) return length > 0 && !state.app.canSeal();
  if (ctx.policy.current.size === 0) return false;
  const rule = ruleOf(ctx, state.principal, topic);
  return (
    deliveryFor(rule, 'app', length, 0, false) === 'encryption' &&
    deliveryFor(rule, 'app', length, 0, true) !== 'encryption'
  );
}

interface QueueStore {
  outgoingStream(client: Client): Readable;
}
const INTERCEPTED = Symbol('qkey.appQueueHold');

/**
 * Puts a hold on an application connection: its live deliveries gated, and its stored queue read through the hold.
 * Made at CONNECT for a persistent session (clean session 0), whose queue Aedes sends before any announcement; for
 * a clean session at its first announcement (`readingQueue` false), from when its key can run out. The
 * persistence's outgoingStream is intercepted once, for the clients holding one. A delivery held for a spent key
 * tells the app to rotate, if the seal that spent it did not already.
 */
export function holdForAppKey(
  ctx: PluginContext,
  client: Client,
  state: ClientState,
  limits: AppHoldLimits,
  readingQueue = true,
): void {
  const hold = new AppDeliveryHold(
    (p) => {
      const needs = needsAppKey(ctx, state, p.topic, p.payload.length);
      if (needs && state.app?.active) tellAppToRotate(ctx, client, state);
      return needs;
    },
    limits,
    (outcome, held, leftStored) => {
      if (outcome === 'open' && leftStored === 0) return;
      ctx.o.log?.info({ client: client.id, outcome, held, leftStored }, 'app session hold ended');
    },
  );
  state.appHold = hold;
  hold.gate(client, readingQueue);
  const store = (client as unknown as { broker: { persistence: QueueStore & { [INTERCEPTED]?: true } } }).broker
    .persistence;
  if (store[INTERCEPTED]) return;
  const read = store.outgoingStream.bind(store);
  store.outgoingStream = (c: Client) => {
    const h = ctx.states.get(c)?.appHold;
    return h ? h.storedQueue(read(c)) : read(c);
  };
  store[INTERCEPTED] = true;
}
