// Aedes' message emitter (mqemitter) made safe under overload: its queue drains iteratively and in linear time.
import mqemitter from 'mqemitter';

/**
 * An emitter shared by several brokers (mqemitter-redis) offers its local delivery under this key: `done` runs once
 * this broker's own subscribers have the message, where a shared emit completes when Redis has it.
 */
export const LOCAL_EMIT = Symbol.for('qkey.localEmit');
export type LocalEmit = (message: mqemitter.Message, done: (err?: Error) => void) => void;

/** Backlogged messages started per event-loop turn. */
const DRAIN_BATCH = 1024;

/** The mqemitter internals this module relies on (mqemitter 7.x; see the version check below). */
interface EmitterInternals extends mqemitter.MQEmitter {
  _do(message: mqemitter.Message, callback: (err?: Error) => void): unknown;
  _messageQueue: Queue<mqemitter.Message>;
  _messageCallbacks: Queue<(err?: Error) => void>;
}

/** What mqemitter does with its queues: push, shift and length. */
interface Queue<T> {
  push(item: T): unknown;
  shift(): T | undefined;
  readonly length: number;
}

/**
 * A FIFO with amortised O(1) shift. Array.prototype.shift moves every element once the array is large (V8 cannot
 * trim arrays in its large-object space), which makes draining mqemitter's queue quadratic in its length: 50,000
 * queued messages took 2.8 s to drain here, so a broker that fell behind fell further behind.
 */
export class Fifo<T> implements Queue<T> {
  private items: Array<T | undefined> = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): number {
    this.items.push(item);
    return this.length;
  }

  shift(): T | undefined {
    if (this.head === this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    // Compact once the consumed prefix is half the array: each element is copied O(1) times on average.
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }
}

export interface BoundedEmitterOptions {
  /** Messages routed at once before later ones queue (Aedes' `concurrency`, default 100). */
  concurrency?: number;
  /** Nested queue drains allowed on one stack before the rest continue on a fresh one. */
  maxDepth?: number;
}

/**
 * mqemitter queues emits beyond its concurrency and starts the next queued message from the completion callback
 * of the previous one. When a message's handlers complete synchronously (no subscriber, or every subscriber a
 * QoS 0 socket write), draining a long queue recurses once per message and overflows the stack, which takes the
 * broker down (mcollina/mqemitter#204, open upstream). This wrapper counts that nesting; beyond `maxDepth` the
 * message, and every one started after it while it waits, goes onto a FIFO backlog drained by a loop from
 * setImmediate. Backlogged messages keep their concurrency slot, so new emits still queue behind them and routing
 * order is unchanged.
 */
export function createBoundedEmitter(options: BoundedEmitterOptions = {}): mqemitter.MQEmitter {
  return boundEmitter(mqemitter({ concurrency: options.concurrency ?? 100 }), options);
}

/**
 * The same bound on an emitter built elsewhere on mqemitter 7.x (mqemitter-redis: its local delivery of what arrives
 * from Redis runs through the same queue). `options.concurrency` is the emitter's own.
 */
export function boundEmitter<E extends mqemitter.MQEmitter>(emitter: E, options: BoundedEmitterOptions = {}): E {
  const maxDepth = options.maxDepth ?? 64;
  const mq = emitter as unknown as EmitterInternals;
  const run = mq._do;
  if (typeof run !== 'function' || typeof mq.current !== 'number' || !Array.isArray(mq._messageQueue))
    throw new Error('unsupported mqemitter version: expected the 7.x internals _do, current and _messageQueue');
  mq._messageQueue = new Fifo();
  mq._messageCallbacks = new Fifo();
  const backlog = new Fifo<[mqemitter.Message, (err?: Error) => void]>();
  let depth = 0;
  let scheduled = false;

  const start = (message: mqemitter.Message, callback: (err?: Error) => void) => {
    depth++;
    try {
      run.call(mq, message, callback);
    } finally {
      depth--;
    }
  };
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(drain);
  };
  const drain = () => {
    scheduled = false;
    // Messages started by the ones run here join the backlog while it is non-empty, so this loop (not the stack)
    // carries the drain. A bounded batch per turn lets sockets and timers run between batches.
    for (let n = 0; n < DRAIN_BATCH; n++) {
      const next = backlog.shift();
      if (!next) return;
      mq.current--; // give back the slot held while it waited; _do takes it again
      start(next[0], next[1]);
    }
    if (backlog.length > 0) schedule();
  };
  mq._do = (message, callback) => {
    if (backlog.length === 0 && depth < maxDepth) {
      start(message, callback);
      return mq;
    }
    mq.current++; // hold this message's slot so that emits arriving meanwhile queue behind it
    backlog.push([message, callback]);
    schedule();
    return mq;
  };
  return emitter;
}
