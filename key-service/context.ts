// What the key-service routes share: store, claim queue, audit queue, signing key, login state and metrics; token issuing.
import { randomUUID } from 'node:crypto';
import { type AppAcl, signToken, type TokenClaims, type TokenRole } from '../protocol/index.js';
import type { AppSessionStore } from './app-sessions.js';
import type { AuditQueue } from './audit-queue.js';
import type { ClaimQueue } from './claims.js';
import type { KmsConfig } from './config.js';
import type { ChallengeBook } from './login.js';
import type { LoginLimiter } from './login-limits.js';
import type { KmsMetrics } from './metrics.js';
import type { PolicyStore } from './policy-store.js';
import type { SigningKey } from './secrets.js';
import type { KeyStore } from './store.js';

export interface KmsContext {
  config: Readonly<KmsConfig>;
  store: KeyStore;
  claims: ClaimQueue;
  /** Audit records a response waits for (logins), group-committed per event-loop turn. */
  audits: AuditQueue;
  signing: SigningKey;
  adminToken: string;
  challenges: ChallengeBook;
  limiter: LoginLimiter;
  metrics: KmsMetrics;
  policies: PolicyStore;
  /** Application sessions: SM2 keys, the app key pool (app-sessions.ts), and their challenges. */
  appSessions: AppSessionStore;
  appChallenges: ChallengeBook;
}

export function issueToken(
  ctx: KmsContext,
  role: TokenRole,
  sub: string,
  acl?: AppAcl,
  suites?: number[],
): { token: string; expiresIn: number } {
  const now = Math.floor(Date.now() / 1000);
  const ttl = ctx.config.tokenTtl[role];
  const claims: TokenClaims = {
    v: 1,
    kid: ctx.signing.kid,
    sub,
    role,
    iat: now,
    exp: now + ttl,
    jti: randomUUID(),
    ...(acl ? { acl } : {}),
    ...(suites ? { suites } : {}),
  };
  return { token: signToken(claims, ctx.signing.privateKey), expiresIn: ttl };
}
