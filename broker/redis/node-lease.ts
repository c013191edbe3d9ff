// One broker id per Redis: Aedes tells messages apart by (broker id, counter) and takes a client over from another
// broker by its id, so two live brokers with one id would drop each other's messages as duplicates. Each broker holds
// a lease on its id in Redis, renewed while it runs; a second broker with the same id is refused at start.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';

/** How long a lease outlives its last renewal: a broker killed with -9 frees its id after at most this. */
export const LEASE_MS = 10_000;
const RENEW_MS = 3_000;

/** Renews the lease only if this broker still holds it. */
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;
/** Gives the lease back only if this broker still holds it. */
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

export class NodeIdInUse extends Error {
  constructor(brokerId: string) {
    super(
      `broker id ${brokerId} is in use by another broker on this Redis: each broker sharing a Redis needs its own id ` +
        `(--broker-id); a broker that was killed frees its id within ${LEASE_MS / 1000} s`,
    );
    this.name = 'NodeIdInUse';
  }
}

export class NodeLease {
  private readonly token = randomUUID();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly brokerId: string,
    private readonly onLost: (reason: string) => void,
  ) {}

  /** Takes the lease or throws NodeIdInUse. */
  async acquire(): Promise<void> {
    const taken = await this.redis.set(this.key, this.token, 'PX', LEASE_MS, 'NX');
    if (taken !== 'OK') throw new NodeIdInUse(this.brokerId);
    this.timer = setInterval(() => void this.renew(), RENEW_MS).unref();
  }

  private async renew(): Promise<void> {
    try {
      const renewed = await this.redis.eval(RENEW, 1, this.key, this.token, LEASE_MS);
      if (renewed === 0) this.onLost('another broker took this broker id after the lease ran out');
    } catch (err) {
      this.onLost(`the lease could not be renewed: ${(err as Error).message}`);
    }
  }

  async release(): Promise<void> {
    clearInterval(this.timer);
    await this.redis.eval(RELEASE, 1, this.key, this.token).catch(() => undefined);
  }
}
