// The --redis boundary: a URL that is not Redis's, an unreachable Redis, and a password in the URL, which no error
// or log line repeats; the broker id lease that keeps two brokers from sharing an id.
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBrokerConfig } from '../../broker/config.js';
import { startRedisEngine } from '../../broker/redis/engine.js';
import { NodeLease } from '../../broker/redis/node-lease.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
}, 20_000);
afterAll(() => redis?.stop());

const ENGINE = { concurrency: 100, maxQueuedMessages: 10, maxQueuedBytes: 0 };

describe('configuration', () => {
  it.each(['http://127.0.0.1:6379', 'redis:/x', '127.0.0.1:6379', ''])('refuses %j as a Redis URL', (url) => {
    expect(() => loadBrokerConfig({ redis: url }, { env: {} })).toThrow(/redis/);
  });

  it('never repeats the URL, which may carry a password', () => {
    let message = '';
    try {
      loadBrokerConfig({ redis: 'http://user:s3cret-pw@host:1' }, { env: {} });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/redis/);
    expect(message).not.toContain('s3cret-pw');
  });

  it('takes the URL from QKEY_BROKER_REDIS', () => {
    expect(loadBrokerConfig({}, { env: { QKEY_BROKER_REDIS: 'rediss://h:6380/2' } }).redis).toBe('rediss://h:6380/2');
  });
});

describe('the engine', () => {
  it('refuses to start when Redis cannot be reached, naming where without the password', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const err = await startRedisEngine(`redis://user:s3cret-pw@127.0.0.1:${port}`, { brokerId: 'x', ...ENGINE }).catch(
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain(`cannot reach Redis at redis://127.0.0.1:${port}`);
    expect((err as Error).message).not.toContain('s3cret-pw');
  });

  it('gives the broker id back at close, so the next broker with that id starts', async () => {
    const first = await startRedisEngine(redis.url, { brokerId: 'lease-1', ...ENGINE });
    await expect(startRedisEngine(redis.url, { brokerId: 'lease-1', ...ENGINE })).rejects.toThrow(/in use/);
    first.mq.close(() => undefined);
    await first.close();
    const second = await startRedisEngine(redis.url, { brokerId: 'lease-1', ...ENGINE });
    second.mq.close(() => undefined);
    await second.close();
  });

  it('a lease that ran out and was taken by another broker is reported lost, and not released from under it', async () => {
    const conn = new Redis(redis.url);
    const lost: string[] = [];
    const a = new NodeLease(conn, 'qkey:test-lease', 'b-1', (reason) => lost.push(reason));
    await a.acquire();
    await conn.set('qkey:test-lease', 'someone else'); // as if it expired and another broker took it
    await (a as unknown as { renew(): Promise<void> }).renew();
    expect(lost).toEqual(['another broker took this broker id after the lease ran out']);
    await a.release();
    expect(await conn.get('qkey:test-lease')).toBe('someone else');
    conn.disconnect();
  });
});
