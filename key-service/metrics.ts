// Prometheus metrics of the key service: claims, batches, logins, errors and pool levels (read at scrape time).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { KeyStore } from './store.js';

/**
 * How often the pool gauges may recount the key table. /metrics answers anyone, and a recount reads every key row
 * (400 ms of the event loop at 300,000 keys): counted at most once per interval, a scrape costs the same at any rate.
 */
export const POOL_CENSUS_INTERVAL_MS = 10_000;

interface PoolCensus {
  keys: ReturnType<KeyStore['keyCounts']>;
  pools: ReturnType<KeyStore['allPools']>;
}

/** The key store's counts for the gauges, recounted only when the last count is older than the interval. */
function poolCensus(store: KeyStore, now: () => number): () => PoolCensus {
  let at = -Infinity;
  let last: PoolCensus = { keys: [], pools: [] };
  return () => {
    const t = now();
    if (t - at >= POOL_CENSUS_INTERVAL_MS) {
      last = { keys: store.keyCounts(), pools: store.allPools() };
      at = t;
    }
    return last;
  };
}

export function createKmsMetrics(store: KeyStore, lowWater: number, now: () => number = Date.now) {
  const census = poolCensus(store, now);
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'kms_' });
  const claims = new Counter({
    name: 'kms_claim_requests_total',
    help: 'ETSI key delivery requests by API and result',
    labelNames: ['api', 'result'],
    registers: [registry],
  });
  const keysDelivered = new Counter({
    name: 'kms_keys_delivered_total',
    help: 'Keys delivered after a durable claim',
    registers: [registry],
  });
  const batchSize = new Histogram({
    name: 'kms_claim_batch_size',
    help: 'Claim requests committed per transaction (group commit)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    registers: [registry],
  });
  const commitSeconds = new Histogram({
    name: 'kms_claim_commit_seconds',
    help: 'Time to apply and durably commit one claim batch',
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5],
    registers: [registry],
  });
  const logins = new Counter({
    name: 'kms_logins_total',
    help: 'Token requests by grant and result',
    labelNames: ['grant', 'result'],
    registers: [registry],
  });
  const errors = new Counter({
    name: 'kms_http_errors_total',
    help: 'Error responses by code',
    labelNames: ['code'],
    registers: [registry],
  });
  new Gauge({
    name: 'kms_keys',
    help: 'Keys by direction and state',
    labelNames: ['direction', 'state'],
    registers: [registry],
    collect() {
      this.reset();
      for (const r of census().keys) this.set({ direction: r.direction, state: r.state }, r.n);
    },
  });
  new Gauge({
    name: 'kms_low_pool_devices',
    help: `Active devices with fewer than low-water (${lowWater}) unused keys in a pool`,
    labelNames: ['direction'],
    registers: [registry],
    collect() {
      let up = 0;
      let down = 0;
      for (const p of census().pools) {
        if (p.up < lowWater) up++;
        if (p.down < lowWater) down++;
      }
      this.set({ direction: 'up' }, up);
      this.set({ direction: 'down' }, down);
    },
  });
  return { registry, claims, keysDelivered, batchSize, commitSeconds, logins, errors };
}

export type KmsMetrics = ReturnType<typeof createKmsMetrics>;
