// Device login challenges: single-use, bound to a device, expiring; each source address holds a bounded share.
import { randomBytes } from 'node:crypto';
import { LOGIN_CHALLENGE_LENGTH } from '../protocol/index.js';
import { sourceKey } from './login-limits.js';

interface OpenChallenge {
  deviceId: string;
  source: string;
  expiresAt: number;
}

/**
 * Outstanding challenges, each usable once, by the device it was issued to, before it expires. A source that
 * asks for more than its share evicts its own oldest challenge, never another source's; when the whole book is
 * full of unexpired challenges, new ones are refused rather than evicting anyone's.
 */
export class ChallengeBook {
  /** In issue order, which is also expiry order (one TTL for all). */
  private readonly open = new Map<string, OpenChallenge>();
  private readonly bySource = new Map<string, Set<string>>();

  constructor(
    private readonly ttlMs: number,
    private readonly perSource: number,
    private readonly maxOpen = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** A fresh challenge for `deviceId`, or undefined when the book is full. */
  issue(deviceId: string, address: string): { challenge: Buffer; expiresAt: number } | undefined {
    const t = this.now();
    const source = sourceKey(address);
    this.expire(t);
    const mine = this.bySource.get(source);
    if (mine && mine.size >= this.perSource) this.remove(mine.values().next().value as string);
    else if (this.open.size >= this.maxOpen) return undefined;
    const challenge = randomBytes(LOGIN_CHALLENGE_LENGTH);
    const key = challenge.toString('base64');
    const expiresAt = t + this.ttlMs;
    this.open.set(key, { deviceId, source, expiresAt });
    let set = this.bySource.get(source);
    if (!set) this.bySource.set(source, (set = new Set()));
    set.add(key);
    return { challenge, expiresAt };
  }

  /** Consumes the challenge; true only if it was open, unexpired and issued to `deviceId`. */
  take(deviceId: string, challengeB64: string): boolean {
    return this.takeIssued(deviceId, challengeB64) !== undefined;
  }

  /** Consumes the challenge; its expiry (ms) only if it was open, unexpired and issued to `subject`. */
  takeIssued(subject: string, challengeB64: string): number | undefined {
    const entry = this.open.get(challengeB64);
    if (!entry) return undefined;
    this.remove(challengeB64);
    return entry.deviceId === subject && entry.expiresAt > this.now() ? entry.expiresAt : undefined;
  }

  get size(): number {
    return this.open.size;
  }

  /** Drops expired challenges from the front: amortised O(1) per issue. */
  private expire(t: number): void {
    for (const [key, entry] of this.open) {
      if (entry.expiresAt > t) return;
      this.remove(key);
    }
  }

  private remove(key: string): void {
    const entry = this.open.get(key);
    if (!entry) return;
    this.open.delete(key);
    const set = this.bySource.get(entry.source);
    set?.delete(key);
    if (set?.size === 0) this.bySource.delete(entry.source);
  }
}
