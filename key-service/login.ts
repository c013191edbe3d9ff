// Device login state: single-use challenges bound to a device, and limits on failed attempts.
import { randomBytes } from 'node:crypto';
import { LOGIN_CHALLENGE_LENGTH } from '../protocol/index.js';

/** Outstanding challenges, each usable once, by the device it was issued to, before it expires. */
export class ChallengeBook {
  private readonly open = new Map<string, { deviceId: string; expiresAt: number }>();

  constructor(
    private readonly ttlMs: number,
    private readonly maxOpen = 100_000,
  ) {}

  issue(deviceId: string, now = Date.now()): { challenge: Buffer; expiresAt: number } {
    if (this.open.size >= this.maxOpen) this.sweep(now);
    if (this.open.size >= this.maxOpen) this.open.delete(this.open.keys().next().value as string);
    const challenge = randomBytes(LOGIN_CHALLENGE_LENGTH);
    const expiresAt = now + this.ttlMs;
    this.open.set(challenge.toString('base64'), { deviceId, expiresAt });
    return { challenge, expiresAt };
  }

  /** Consumes the challenge; true only if it was open, unexpired and issued to `deviceId`. */
  take(deviceId: string, challengeB64: string, now = Date.now()): boolean {
    const entry = this.open.get(challengeB64);
    if (!entry) return false;
    this.open.delete(challengeB64);
    return entry.deviceId === deviceId && entry.expiresAt > now;
  }

  private sweep(now: number): void {
    for (const [k, v] of this.open) if (v.expiresAt <= now) this.open.delete(k);
  }
}

/** Counts failures per key (device id, source address) in fixed windows; blocks a key past its limit. */
export class FailureLimiter {
  private readonly counts = new Map<string, { n: number; resetAt: number }>();

  constructor(private readonly windowMs: number) {}

  /** Seconds to wait if `key` has used up `limit` failures in this window, else undefined. */
  blocked(key: string, limit: number, now = Date.now()): number | undefined {
    const c = this.counts.get(key);
    if (!c || c.resetAt <= now) return undefined;
    return c.n >= limit ? Math.ceil((c.resetAt - now) / 1000) : undefined;
  }

  fail(key: string, now = Date.now()): void {
    const c = this.counts.get(key);
    if (!c || c.resetAt <= now) {
      if (this.counts.size > 100_000) this.sweep(now);
      this.counts.set(key, { n: 1, resetAt: now + this.windowMs });
    } else c.n++;
  }

  private sweep(now: number): void {
    for (const [k, v] of this.counts) if (v.resetAt <= now) this.counts.delete(k);
  }
}
