// Login attempt limits: per source and per (subject, source) with exponential backoff, a per-subject bound that
// slows suspects instead of locking the subject out, and a per-source challenge rate. Pure: the clock is injected.
import { isIPv6 } from 'node:net';

export interface LoginLimitSettings {
  /** Failed attempts one source may make, for any subjects, before its backoff starts. */
  perSource: number;
  /** Failed attempts for one subject (device, app or broker) from one source before that pair's backoff starts. */
  perSubjectSource: number;
  /**
   * Failed attempts for one subject from all sources together before it is treated as under attack; then sources
   * that already failed for it share one attempt per second. Sources with no failure for it are never slowed.
   */
  perSubject: number;
  /** Longest backoff, seconds; backoff doubles from 1 s with each failure past the allowance. */
  maxBackoffSeconds: number;
  /** Failure counters idle (no failure) this long are forgotten, seconds. */
  forgetSeconds: number;
  /** Challenges one source may request per second, and how many it may save up. */
  challengeRate: number;
  challengeBurst: number;
}

export type Scope = 'source' | 'subject-source' | 'subject' | 'challenge-rate';

export interface Refusal {
  ok: false;
  scope: Scope;
  retryAfterSeconds: number;
}

/** An admitted attempt; exactly one of its methods must be called when the outcome is known. */
export interface Attempt {
  ok: true;
  succeeded(): void;
  failed(): void;
  /** Neither success nor failure (the check itself could not run). */
  abandoned(): void;
}

interface Counter {
  failures: number;
  inFlight: number;
  lastFailureAt: number;
  blockedUntil: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/** Entries kept per table; past this, idle entries are dropped, oldest first. */
const MAX_ENTRIES = 100_000;
/** While a subject is under attack, its suspect sources share one attempt per this interval. */
const SUSPECT_INTERVAL_MS = 1000;

/**
 * The address limits are keyed by: IPv4 as is (also when IPv4-mapped), IPv6 by its /64 prefix, because one
 * subscriber usually holds a whole /64 and could otherwise give every attempt a fresh address.
 */
export function sourceKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  const bare = address.split('%')[0]!;
  if (!isIPv6(bare)) return address;
  const [head = '', tail = ''] = bare.includes('::') ? bare.split('::') : [bare, ''];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const missing = 8 - headGroups.length - tailGroups.length - (tailGroups.some((g) => g.includes('.')) ? 1 : 0);
  const groups = [...headGroups, ...Array<string>(Math.max(0, missing)).fill('0'), ...tailGroups];
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(':')}::/64`;
}

export class LoginLimiter {
  private readonly sources = new Map<string, Counter>();
  private readonly pairs = new Map<string, Counter>();
  private readonly subjects = new Map<string, Counter>();
  private readonly challengeBuckets = new Map<string, Bucket>();

  constructor(
    private readonly settings: Readonly<LoginLimitSettings>,
    private readonly now: () => number = Date.now,
  ) {}

  /** Admits a login attempt for `subject` from `address`, or says how long to wait. */
  attempt(subject: string, address: string): Attempt | Refusal {
    const t = this.now();
    const source = sourceKey(address);
    const pairKey = `${subject}\u0000${source}`;
    // Looked up without being stored: a refused attempt adds no entries (a flood of made-up ids costs no memory).
    const fresh = (): Counter => ({ failures: 0, inFlight: 0, lastFailureAt: t, blockedUntil: 0 });
    const refusal =
      this.gate(this.live(this.sources, source, t) ?? fresh(), this.settings.perSource, t, 'source') ??
      this.gate(this.live(this.pairs, pairKey, t) ?? fresh(), this.settings.perSubjectSource, t, 'subject-source') ??
      this.slowSuspect(this.live(this.subjects, subject, t) ?? fresh(), this.live(this.pairs, pairKey, t), t);
    if (refusal) return refusal;
    const src = this.counter(this.sources, source, t);
    const pair = this.counter(this.pairs, pairKey, t);
    const subj = this.counter(this.subjects, subject, t);
    src.inFlight++;
    pair.inFlight++;
    let settled = false;
    const settle = (outcome: 'ok' | 'failed' | 'abandoned') => {
      if (settled) return;
      settled = true;
      src.inFlight--;
      pair.inFlight--;
      const at = this.now();
      if (outcome === 'ok') {
        // Success clears this pair only: owning one account must not reset a source's or a subject's record.
        pair.failures = 0;
        pair.blockedUntil = 0;
      } else if (outcome === 'failed') {
        this.fail(src, this.settings.perSource, at);
        this.fail(pair, this.settings.perSubjectSource, at);
        this.fail(subj, Infinity, at);
        this.touch(this.sources, source, src);
        this.touch(this.pairs, pairKey, pair);
        this.touch(this.subjects, subject, subj);
      }
    };
    return {
      ok: true,
      succeeded: () => settle('ok'),
      failed: () => settle('failed'),
      abandoned: () => settle('abandoned'),
    };
  }

  /** How many records are kept (each table is bounded; refused attempts add none). */
  get tracked(): { sources: number; pairs: number; subjects: number } {
    return { sources: this.sources.size, pairs: this.pairs.size, subjects: this.subjects.size };
  }

  /** Refuses early (before a challenge is issued) when an attempt from here would be refused anyway. */
  check(subject: string, address: string): Refusal | undefined {
    const t = this.now();
    const source = sourceKey(address);
    const blocked = (c: Counter | undefined, scope: Scope): Refusal | undefined =>
      c && c.blockedUntil > t ? { ok: false, scope, retryAfterSeconds: seconds(c.blockedUntil - t) } : undefined;
    return (
      blocked(this.live(this.sources, source, t), 'source') ??
      blocked(this.live(this.pairs, `${subject}\u0000${source}`, t), 'subject-source')
    );
  }

  /** Takes one challenge from `address`'s token bucket, or says how long until the next one. */
  challenge(address: string): Refusal | undefined {
    const t = this.now();
    const source = sourceKey(address);
    const { challengeRate: rate, challengeBurst: burst } = this.settings;
    let b = this.challengeBuckets.get(source);
    if (!b) {
      this.makeRoom(this.challengeBuckets);
      this.challengeBuckets.set(source, (b = { tokens: burst, at: t }));
    } else {
      b.tokens = Math.min(burst, b.tokens + ((t - b.at) * rate) / 1000);
      b.at = t;
    }
    if (b.tokens < 1)
      return { ok: false, scope: 'challenge-rate', retryAfterSeconds: seconds(((1 - b.tokens) * 1000) / rate) };
    b.tokens -= 1;
    this.challengeBuckets.delete(source);
    this.challengeBuckets.set(source, b);
    return undefined;
  }

  /** Past the allowance: refuse while backing off, and let one attempt at a time through. */
  private gate(c: Counter, allowance: number, t: number, scope: Scope): Refusal | undefined {
    if (c.blockedUntil > t) return { ok: false, scope, retryAfterSeconds: seconds(c.blockedUntil - t) };
    // Attempts still being checked count as failures until they succeed, so a burst of parallel requests gets no
    // more tries than a sequence of them would.
    if (c.inFlight > 0 && c.failures + c.inFlight >= allowance) return { ok: false, scope, retryAfterSeconds: 1 };
    return undefined;
  }

  /** A subject under attack: sources that have failed for it share one attempt per second; others pass. */
  private slowSuspect(subj: Counter, pair: Counter | undefined, t: number): Refusal | undefined {
    if (subj.failures < this.settings.perSubject || !pair || pair.failures === 0) return undefined;
    if (subj.blockedUntil > t)
      return { ok: false, scope: 'subject', retryAfterSeconds: seconds(subj.blockedUntil - t) };
    subj.blockedUntil = t + SUSPECT_INTERVAL_MS;
    return undefined;
  }

  private fail(c: Counter, allowance: number, t: number): void {
    c.failures++;
    c.lastFailureAt = t;
    const excess = c.failures - allowance; // the allowance's last failure waits 1 s, each further one twice as long
    if (excess >= 0) {
      const delay = Math.min(this.settings.maxBackoffSeconds * 1000, 1000 * 2 ** Math.min(excess, 30));
      c.blockedUntil = Math.max(c.blockedUntil, t + delay);
    }
  }

  private idle(c: Counter, t: number): boolean {
    if (c.inFlight > 0 || c.blockedUntil > t) return false;
    return c.failures === 0 || c.lastFailureAt + this.settings.forgetSeconds * 1000 <= t;
  }

  private live(table: Map<string, Counter>, key: string, t: number): Counter | undefined {
    const c = table.get(key);
    if (c && this.idle(c, t)) {
      table.delete(key);
      return undefined;
    }
    return c;
  }

  private counter(table: Map<string, Counter>, key: string, t: number): Counter {
    let c = this.live(table, key, t);
    if (!c) {
      this.makeRoom(table);
      table.set(key, (c = { failures: 0, inFlight: 0, lastFailureAt: t, blockedUntil: 0 }));
    }
    return c;
  }

  /** Keeps the table in recency order, so the entries dropped when it is full are the longest unused. */
  private touch(table: Map<string, Counter>, key: string, c: Counter): void {
    table.delete(key);
    table.set(key, c);
  }

  /** Drops the least recently used entries not in use (O(1) amortised: a full scan per insert would be a DoS). */
  private makeRoom<V extends Counter | Bucket>(table: Map<string, V>): void {
    if (table.size < MAX_ENTRIES) return;
    for (const [k, v] of table) {
      if (table.size < MAX_ENTRIES) return;
      if (!('inFlight' in v) || v.inFlight === 0) table.delete(k);
    }
  }
}

function seconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}
