// The Redis persistence: aedes-persistence's abstract test suite (every method's contract, run against a real
// redis-server), then what that suite does not ask and several brokers need: one queue entry per subscriber, and a
// session continued by another broker process or after a restart.
import assert from 'node:assert';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { Redis } from 'ioredis';
import mqemitter from 'mqemitter';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { RedisPersistence, type PersistedPacket } from '../../broker/redis/persistence.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

const require = createRequire(import.meta.url);
const abstractPersistence = require('aedes-persistence/abstract.js') as (opts: object) => void;

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
}, 20_000);
afterAll(() => redis?.stop());

/** A store with its own key prefix: each test starts on an empty keyspace, as the suite expects. */
function store(prefix = `t${randomUUID()}:`, options: Partial<ConstructorParameters<typeof RedisPersistence>[0]> = {}) {
  return new RedisPersistence({ redis: new Redis(redis.url), prefix, ...options });
}

/** node:test's `t` as the suite uses it, with t.plan(n) checked: exactly n assertions must have run. */
function nodeTestContext() {
  let planned: number | undefined;
  let count = 0;
  const counted =
    <A extends unknown[]>(f: (...a: A) => void) =>
    (...a: A) => {
      count++;
      f(...a);
    };
  return {
    t: {
      plan: (n: number) => void (planned = n),
      diagnostic: () => undefined,
      assert: {
        equal: counted(assert.equal),
        notEqual: counted(assert.notEqual),
        deepEqual: counted(assert.deepEqual),
        ok: counted(assert.ok),
      },
    },
    check: () => planned === undefined || expect(count, 'assertions run against t.plan').toBe(planned),
  };
}

/**
 * The suite's will tests: wills are not stored, by design (RedisPersistence.putWill says why); the test below checks
 * that. Every other test of the suite runs.
 */
const NOT_STORED_WILLS = [
  'store, fetch and delete will message',
  'stream all will messages',
  'stream all will message for unknown brokers',
];

describe('aedes-persistence abstract suite', () => {
  abstractPersistence({
    test: (name: string, fn: (t: unknown) => Promise<void>) =>
      (NOT_STORED_WILLS.includes(name) ? test.skip : test)(name, async () => {
        const { t, check } = nodeTestContext();
        await fn(t);
        check();
      }),
    persistence: () => store(),
    testAsync: true,
  });
});

describe('several subscribers, several brokers', () => {
  const client = (id: string) => ({ id });
  const publish = (n: number, payload = `command ${n}`): PersistedPacket => ({
    cmd: 'publish',
    topic: 'devices/dev-1/down/cmd',
    payload: Buffer.from(payload),
    qos: 1,
    retain: false,
    dup: false,
    brokerId: 'broker-a',
    brokerCounter: n,
  });
  async function setUp(p: RedisPersistence) {
    const mq = mqemitter();
    await p.setup({
      id: 'b',
      mq,
      publish: mq.emit.bind(mq),
      subscribe: mq.on.bind(mq),
      unsubscribe: mq.removeListener.bind(mq),
    });
    return p;
  }
  const list = async (p: RedisPersistence, id: string) => {
    const out: PersistedPacket[] = [];
    for await (const x of p.outgoingStream(client(id))) out.push(x);
    return out;
  };

  test("a delivery's packet identifier and sealed payload never reach another subscriber's copy", async () => {
    const p = await setUp(store());
    await p.outgoingEnqueueCombi([{ clientId: 'dev-1' }, { clientId: 'app~1' }], publish(1));
    // The device's delivery is sealed (another payload) and gets identifier 7; the application's gets 9.
    await p.outgoingUpdate(client('dev-1'), { ...publish(1, 'SEALED ENVELOPE'), messageId: 7 });
    await p.outgoingUpdate(client('app~1'), { ...publish(1), messageId: 9 });
    const [dev] = await list(p, 'dev-1');
    const [app] = await list(p, 'app~1');
    expect(dev!.payload!.toString()).toBe('command 1');
    expect(dev!.messageId).toBe(7);
    expect(app!.payload!.toString()).toBe('command 1');
    expect(app!.messageId).toBe(9);
    // The application's acknowledgement removes its copy only.
    expect((await p.outgoingClearMessageId(client('app~1'), { messageId: 9 }))!.payload!.toString()).toBe('command 1');
    expect(await list(p, 'app~1')).toEqual([]);
    expect(await list(p, 'dev-1')).toHaveLength(1);
    await p.destroy();
  });

  test('an identifier given on one broker is acknowledged on another, and a restart forgets nothing', async () => {
    const prefix = `t${randomUUID()}:`;
    const a = await setUp(store(prefix));
    await a.outgoingEnqueue({ clientId: 'dev-1' }, publish(1));
    await a.outgoingEnqueue({ clientId: 'dev-1' }, publish(2));
    await a.outgoingUpdate(client('dev-1'), { ...publish(1), messageId: 1 });
    await a.destroy(); // broker A is gone; nothing of the queue lived in it
    const b = await setUp(store(prefix));
    const queued = await list(b, 'dev-1');
    expect(queued.map((q) => [q.brokerCounter, q.messageId])).toEqual([
      [1, 1],
      [2, undefined],
    ]);
    expect(await b.outgoingClearMessageId(client('dev-1'), { messageId: 1 })).toMatchObject({ brokerCounter: 1 });
    expect((await list(b, 'dev-1')).map((q) => q.brokerCounter)).toEqual([2]);
    await b.destroy();
  });

  test("a broker that starts later knows every persistent session's subscriptions", async () => {
    const prefix = `t${randomUUID()}:`;
    const a = await setUp(store(prefix));
    for (let i = 0; i < 1200; i++)
      await a.addSubscriptions(client(`dev-${i}`), [
        { topic: `devices/dev-${i}/down/#`, qos: 1 },
        { topic: `devices/dev-${i}/status`, qos: 0 },
      ]);
    const b = await setUp(store(prefix)); // more clients than one read batch
    expect((await b.subscriptionsByTopic('devices/dev-1150/down/cmd')).map((s) => s.clientId)).toEqual(['dev-1150']);
    expect(await b.subscriptionsByTopic('devices/dev-1150/status')).toEqual([]); // QoS 0: nothing to queue
    expect(await b.countOffline()).toMatchObject({ clientsCount: 1200 });
    await a.destroy();
    await b.destroy();
  });

  test('a broker restarted under the same id numbers its messages above every number it used before', async () => {
    const prefix = `t${randomUUID()}:`;
    const mq = mqemitter();
    const broker = (counter: number) => ({
      id: 'broker-a',
      counter,
      mq,
      publish: mq.emit.bind(mq),
      subscribe: mq.on.bind(mq),
      unsubscribe: mq.removeListener.bind(mq),
    });
    const first = broker(0);
    const a = store(prefix);
    await a.setup(first);
    first.counter += 1000; // a run's messages
    await a.destroy();
    const second = broker(0); // a new process: Aedes starts at 0
    const b = store(prefix);
    await b.setup(second);
    expect(second.counter).toBeGreaterThan(first.counter);
    await b.destroy();
  });

  test('QoS 2: the PUBREL replaces the copy with that identifier only, on any broker', async () => {
    const prefix = `t${randomUUID()}:`;
    const a = await setUp(store(prefix));
    const b = await setUp(store(prefix));
    await a.outgoingEnqueue({ clientId: 'dev-1' }, { ...publish(1), qos: 2 });
    await a.outgoingEnqueue({ clientId: 'dev-1' }, { ...publish(2), qos: 2 });
    await a.outgoingUpdate(client('dev-1'), { ...publish(1), qos: 2, messageId: 5 });
    await a.outgoingUpdate(client('dev-1'), { ...publish(2), qos: 2, messageId: 6 });
    await b.outgoingUpdate(client('dev-1'), { cmd: 'pubrel', messageId: 6 });
    expect((await list(a, 'dev-1')).map((q) => [q.cmd, q.messageId])).toEqual([
      ['publish', 5],
      ['pubrel', 6],
    ]);
    expect(await b.outgoingClearMessageId(client('dev-1'), { messageId: 6 })).toMatchObject({ cmd: 'pubrel' });
    await a.destroy();
    await b.destroy();
  });

  test('the queue bound holds across brokers: the first messages are kept, newer ones dropped and reported', async () => {
    const prefix = `t${randomUUID()}:`;
    const drops: string[] = [];
    const bounded = (s: RedisPersistence) => setUp(s);
    const a = await bounded(store(prefix, { maxQueuedMessages: 2, onDropped: (c, r) => drops.push(`${c}:${r}`) }));
    const b = await bounded(store(prefix, { maxQueuedMessages: 2, onDropped: (c, r) => drops.push(`${c}:${r}`) }));
    await a.outgoingEnqueue({ clientId: 'dev-1' }, publish(1));
    await b.outgoingEnqueue({ clientId: 'dev-1' }, publish(2));
    await a.outgoingEnqueue({ clientId: 'dev-1' }, publish(3));
    expect((await list(b, 'dev-1')).map((q) => q.brokerCounter)).toEqual([1, 2]);
    expect(drops).toEqual(['dev-1:messages']);
    // Acknowledged on b, room again on a.
    await b.outgoingUpdate(client('dev-1'), { ...publish(1), messageId: 1 });
    await b.outgoingClearMessageId(client('dev-1'), { messageId: 1 });
    await a.outgoingEnqueue({ clientId: 'dev-1' }, publish(4));
    expect((await list(a, 'dev-1')).map((q) => q.brokerCounter)).toEqual([2, 4]);
    await a.destroy();
    await b.destroy();
  });

  test('wills are not stored: no broker could open a device will whose key another broker claimed', async () => {
    const p = await setUp(store());
    await p.putWill();
    const wills: unknown[] = [];
    for await (const w of p.streamWill()) wills.push(w);
    expect(wills).toEqual([]);
    expect(await p.getWill()).toBeNull();
    await p.destroy();
  });

  test('a damaged entry is an error, not an empty queue', async () => {
    const prefix = `t${randomUUID()}:`;
    const p = await setUp(store(prefix));
    await p.outgoingEnqueue({ clientId: 'dev-1' }, publish(1));
    const raw = new Redis(redis.url);
    await raw.hset(`${prefix}oute:dev-1`, 'd:1', 'not json');
    await expect(list(p, 'dev-1')).rejects.toThrow();
    raw.disconnect();
    await p.destroy();
  });
});
