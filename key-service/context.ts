// What the key-service routes share: store, claim queue, signing key, login state, metrics and auth checks.
import { randomUUID } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import {
  type AppAcl,
  signToken,
  type TokenClaims,
  TokenError,
  type TokenRole,
  verifyToken,
} from '../protocol/index.js';
import type { ClaimQueue } from './claims.js';
import type { KmsConfig } from './config.js';
import { KmsError } from './errors.js';
import type { ChallengeBook } from './login.js';
import type { LoginLimiter } from './login-limits.js';
import type { KmsMetrics } from './metrics.js';
import { secretEquals, type SigningKey } from './secrets.js';
import type { KeyStore } from './store.js';

export interface KmsContext {
  config: Readonly<KmsConfig>;
  store: KeyStore;
  claims: ClaimQueue;
  signing: SigningKey;
  adminToken: string;
  challenges: ChallengeBook;
  limiter: LoginLimiter;
  metrics: KmsMetrics;
}

function bearer(req: FastifyRequest): string {
  const h = req.headers.authorization;
  if (typeof h !== 'string' || !h.startsWith('Bearer '))
    throw new KmsError('KMS_ERR_UNAUTHORIZED', 'bearer token required');
  return h.slice(7).trim();
}

export function issueToken(
  ctx: KmsContext,
  role: TokenRole,
  sub: string,
  acl?: AppAcl,
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
  };
  return { token: signToken(claims, ctx.signing.privateKey), expiresIn: ttl };
}

/** Verified broker tokens, so a busy broker's requests cost one signature check per token, not per request. */
const brokerTokenCache = new WeakMap<KmsContext, Map<string, TokenClaims>>();
/** When each broker was last seen active in the store; revoking a broker takes effect within this time. */
const BROKER_RECHECK_MS = 1000;
const brokerSeenActive = new WeakMap<KmsContext, Map<string, number>>();

/** Requires a valid, unrevoked broker token; device and app tokens get 401 (ETSI 014: only SAEs of this KME). */
export function requireBroker(ctx: KmsContext, req: FastifyRequest): TokenClaims {
  const token = bearer(req);
  let cache = brokerTokenCache.get(ctx);
  if (!cache) brokerTokenCache.set(ctx, (cache = new Map()));
  const now = Math.floor(Date.now() / 1000);
  let claims = cache.get(token);
  if (!claims || claims.exp <= now) {
    try {
      claims = verifyToken(token, new Map([[ctx.signing.kid, ctx.signing.publicKey]]), now);
    } catch (err) {
      if (err instanceof TokenError) throw new KmsError('KMS_ERR_UNAUTHORIZED', err.code);
      throw err;
    }
    if (claims.role !== 'broker') throw new KmsError('KMS_ERR_UNAUTHORIZED', 'a broker credential is required');
    if (cache.size > 1000) cache.clear();
    cache.set(token, claims);
  }
  let seen = brokerSeenActive.get(ctx);
  if (!seen) brokerSeenActive.set(ctx, (seen = new Map()));
  const nowMs = Date.now();
  if ((seen.get(claims.sub) ?? 0) + BROKER_RECHECK_MS < nowMs) {
    const client = ctx.store.client(claims.sub);
    if (!client || client.role !== 'broker' || client.state !== 'active') {
      cache.delete(token);
      seen.delete(claims.sub);
      throw new KmsError('KMS_ERR_UNAUTHORIZED', 'broker is not registered or was revoked');
    }
    seen.set(claims.sub, nowMs);
  }
  return claims;
}

export function requireAdmin(ctx: KmsContext, req: FastifyRequest): void {
  if (!secretEquals(bearer(req), ctx.adminToken)) throw new KmsError('KMS_ERR_UNAUTHORIZED', 'admin token required');
}
