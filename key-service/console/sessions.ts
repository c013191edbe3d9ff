// Console sessions: held in memory only, named by a random cookie value (stored hashed), each with its CSRF token.
import { createHash, randomBytes } from 'node:crypto';
import type { KmsContext } from '../context.js';

export interface ConsoleSession {
  /** Synchronizer token every state-changing form carries (OWASP CSRF Prevention, "Synchronizer Token Pattern"). */
  readonly csrf: string;
  readonly openedAt: number;
  lastSeen: number;
}

export interface SessionLimits {
  idleMs: number;
  maxMs: number;
  /** Most sessions held at once; opening one more closes the least recently used. */
  maxSessions: number;
}

const hashOf = (cookie: string) => createHash('sha256').update(cookie).digest('base64url');

export class ConsoleSessions {
  /** By the SHA-256 of the cookie value: a lookup's timing says nothing about the values held. */
  private readonly byHash = new Map<string, ConsoleSession>();

  constructor(
    private readonly limits: SessionLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /** A new session and the cookie value that names it (256 random bits; never logged, never in a URL). */
  open(): { cookie: string; session: ConsoleSession } {
    this.sweep();
    while (this.byHash.size >= this.limits.maxSessions) this.byHash.delete(this.byHash.keys().next().value!);
    const cookie = randomBytes(32).toString('base64url');
    const t = this.now();
    const session: ConsoleSession = { csrf: randomBytes(32).toString('base64url'), openedAt: t, lastSeen: t };
    this.byHash.set(hashOf(cookie), session);
    return { cookie, session };
  }

  /** The live session a cookie value names, its idle time restarted; undefined when unknown or expired. */
  find(cookie: string): ConsoleSession | undefined {
    const hash = hashOf(cookie);
    const session = this.byHash.get(hash);
    if (!session) return undefined;
    const t = this.now();
    if (t - session.lastSeen >= this.limits.idleMs || t - session.openedAt >= this.limits.maxMs) {
      this.byHash.delete(hash);
      return undefined;
    }
    session.lastSeen = t;
    // Re-inserted so that the map stays in order of last use (the oldest is dropped first).
    this.byHash.delete(hash);
    this.byHash.set(hash, session);
    return session;
  }

  close(cookie: string): void {
    this.byHash.delete(hashOf(cookie));
  }

  get size(): number {
    return this.byHash.size;
  }

  private sweep(): void {
    const t = this.now();
    for (const [hash, s] of this.byHash)
      if (t - s.lastSeen >= this.limits.idleMs || t - s.openedAt >= this.limits.maxMs) this.byHash.delete(hash);
  }
}

const books = new WeakMap<KmsContext, ConsoleSessions>();

/** Gives the service its session book (once, when the console is registered). */
export function attachConsoleSessions(ctx: KmsContext, sessions: ConsoleSessions): void {
  books.set(ctx, sessions);
}

/** The service's session book; undefined while the console is off. */
export function consoleSessions(ctx: KmsContext): ConsoleSessions | undefined {
  return books.get(ctx);
}

/** The console's cookie name: `__Secure-` under TLS, so that a browser keeps it off plain HTTP (RFC 6265bis §4.1.3.1). */
export function cookieName(tls: boolean): string {
  return tls ? '__Secure-qkey_console' : 'qkey_console';
}

/** One cookie's value from a Cookie header (RFC 6265 §5.4: `name=value` pairs joined by "; "). */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  let found: string | undefined;
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq === -1 || pair.slice(0, eq).trim() !== name) continue;
    // Two cookies of our name (one planted by a sibling host) are ambiguous: neither is used.
    if (found !== undefined) return undefined;
    found = pair.slice(eq + 1).trim();
  }
  return found;
}
