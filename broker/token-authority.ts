// Verifies access tokens offline with the key service's public keys, and follows its revocation feed.
import { createPublicKey, type KeyObject } from 'node:crypto';
import type { KmsClient } from '../kms-api/client.js';
import { type TokenClaims, TokenError, verifyToken } from '../protocol/index.js';

export interface TokenAuthorityOptions {
  /** How often to poll the revocation feed (revoked clients are dropped within about this time). */
  pollMs?: number;
  now?: () => number;
}

type RevokedListener = (subject: string, role: string) => void;

/**
 * Token checks cost one Ed25519 verification and no network round trip. Revocations arrive through a polled feed;
 * a token is refused if its subject was revoked at or after the token was issued. If the feed cannot be reached,
 * verification carries on with what is known and the failure is reported through `feedHealthy`.
 */
export class TokenAuthority {
  private keys = new Map<string, KeyObject>();
  /** subject -> latest revocation time (Unix seconds). */
  private readonly revoked = new Map<string, number>();
  private cursor = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners: RevokedListener[] = [];
  private readonly healthListeners: Array<(healthy: boolean) => void> = [];
  private readonly pollMs: number;
  private readonly now: () => number;
  feedHealthy = false;

  constructor(
    private readonly kms: KmsClient,
    options: TokenAuthorityOptions = {},
  ) {
    this.pollMs = options.pollMs ?? 1000;
    this.now = options.now ?? (() => Math.floor(Date.now() / 1000));
  }

  /** Loads the signing keys and the revocation list; then keeps following the feed. */
  async start(): Promise<void> {
    await this.refreshKeys();
    await this.poll();
    this.timer = setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  onRevoked(listener: RevokedListener): void {
    this.listeners.push(listener);
  }

  /** Called after each poll of the feed with whether the key service answered. */
  onFeedHealth(listener: (healthy: boolean) => void): void {
    this.healthListeners.push(listener);
  }

  /** Verifies `token`; throws TokenError (TOKEN_ERR_*) if it is malformed, forged, expired or revoked. */
  verify(token: string): TokenClaims {
    let claims: TokenClaims;
    try {
      claims = verifyToken(token, this.keys, this.now());
    } catch (err) {
      if (err instanceof TokenError && err.code === 'TOKEN_ERR_KEY') {
        // The key service may have a new signing key; the caller can retry after refreshKeys().
        void this.refreshKeys().catch(() => undefined);
      }
      throw err;
    }
    const revokedAt = this.revoked.get(claims.sub);
    if (revokedAt !== undefined && revokedAt >= claims.iat) throw new TokenError('TOKEN_ERR_REVOKED');
    return claims;
  }

  isRevoked(subject: string, issuedAt: number): boolean {
    const at = this.revoked.get(subject);
    return at !== undefined && at >= issuedAt;
  }

  async refreshKeys(): Promise<void> {
    const { keys } = await this.kms.tokenKeys();
    this.keys = new Map(
      keys
        .filter((k) => k.alg === 'Ed25519')
        .map((k) => [
          k.kid,
          createPublicKey({ key: Buffer.from(k.public_key, 'base64'), format: 'der', type: 'spki' }),
        ]),
    );
  }

  /** One round of the revocation feed; exposed for tests. */
  async poll(): Promise<void> {
    try {
      for (;;) {
        const page = await this.kms.revocations(this.cursor);
        for (const r of page.revocations) {
          this.revoked.set(r.subject, Math.max(this.revoked.get(r.subject) ?? 0, r.revoked_at));
          for (const l of this.listeners) l(r.subject, r.role);
        }
        const more = page.cursor > this.cursor && page.revocations.length > 0;
        this.cursor = page.cursor;
        if (!more || page.revocations.length < 1000) break;
      }
      this.feedHealthy = true;
    } catch {
      this.feedHealthy = false;
    }
    for (const l of this.healthListeners) {
      try {
        l(this.feedHealthy);
      } catch {
        // a listener's failure must not stop the feed
      }
    }
  }
}
