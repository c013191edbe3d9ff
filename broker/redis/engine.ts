// Several brokers over one Redis: mqemitter-redis routes every message to every broker, the Redis persistence keeps
// sessions, queues and retained messages where any broker finds them, and a lease keeps broker ids apart.
import { Redis } from 'ioredis';
import MQEmitterRedis from 'mqemitter-redis';
import { boundEmitter, LOCAL_EMIT, type LocalEmit } from '../mq-emitter.js';
import { NodeLease } from './node-lease.js';
import { RedisPersistence } from './persistence.js';

export interface RedisEngineOptions {
  brokerId: string;
  /** Messages routed at once (Aedes' concurrency). */
  concurrency: number;
  maxQueuedMessages: number;
  maxQueuedBytes: number;
  onDropped?: (clientId: string, reason: 'messages' | 'bytes') => void;
  /** Redis is lost for good (the lease on the broker id could not be kept): the broker should stop. */
  onLost?: (reason: string) => void;
}

export interface RedisEngine {
  mq: ReturnType<typeof MQEmitterRedis>;
  persistence: RedisPersistence;
  /** After Aedes closed (which closes the emitter): gives the broker id back and closes the store. */
  close(): Promise<void>;
}

/** Key prefix of everything QKey keeps in Redis. */
export const REDIS_PREFIX = 'qkey:';

/** Where a URL names a Redis, without its password (for logs and errors). */
export function redisLocation(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return '(malformed URL)';
  }
}

/** A connection that fails now, with a clear error, if Redis cannot be reached (it reconnects by itself later). */
async function connect(url: string): Promise<Redis> {
  // Auto-pipelining: the commands of one event-loop turn go out in one write (as mqemitter-redis sets for its own).
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 3, enableAutoPipelining: true });
  redis.on('error', () => undefined); // reported by the commands that fail; ioredis reconnects
  try {
    await redis.connect();
    return redis;
  } catch (err) {
    redis.disconnect();
    throw new Error(`cannot reach Redis at ${redisLocation(url)}: ${(err as Error).message}`);
  }
}

export async function startRedisEngine(url: string, o: RedisEngineOptions): Promise<RedisEngine> {
  const store = await connect(url);
  const lease = new NodeLease(store, `${REDIS_PREFIX}broker:${o.brokerId}`, o.brokerId, (reason) => o.onLost?.(reason));
  try {
    await lease.acquire();
  } catch (err) {
    store.disconnect();
    throw err;
  }
  const [pubConn, subConn] = await Promise.all([connect(url), connect(url)]).catch(async (err: unknown) => {
    await lease.release();
    store.disconnect();
    throw err;
  });
  const mq = boundEmitter(MQEmitterRedis({ pubConn, subConn, concurrency: o.concurrency }), {
    concurrency: o.concurrency,
  });
  // mqemitter-redis keeps mqemitter's own emit, the local delivery, as _emit.
  const local = (mq as unknown as { _emit: LocalEmit })._emit;
  (mq as unknown as Record<symbol, LocalEmit>)[LOCAL_EMIT] = (message, done) => local.call(mq, message, done);
  const persistence = new RedisPersistence({
    redis: store,
    prefix: REDIS_PREFIX,
    maxQueuedMessages: o.maxQueuedMessages,
    maxQueuedBytes: o.maxQueuedBytes,
    ...(o.onDropped && { onDropped: o.onDropped }),
  });
  return {
    mq,
    persistence,
    async close() {
      await lease.release();
      await persistence.destroy();
    },
  };
}
