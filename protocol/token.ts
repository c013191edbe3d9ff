// Access tokens issued by the key service and verified offline by brokers: format, signing and verification.
// Format (docs/PROTOCOL.md §12): "qk1." || base64url(JSON claims) || "." || base64url(Ed25519 signature).
import { type KeyObject, sign, verify } from 'node:crypto';

export type TokenRole = 'device' | 'app' | 'broker';

/** Topic filters an application may use, with MQTT wildcards. */
export interface AppAcl {
  publish: string[];
  subscribe: string[];
}

export interface TokenClaims {
  /** Token format version. */
  v: 1;
  /** Id of the signing key (the key service publishes its public keys by kid). */
  kid: string;
  /** Subject: device id, app id or broker id. */
  sub: string;
  role: TokenRole;
  /** Issued at and expiry, seconds since the Unix epoch. */
  iat: number;
  exp: number;
  /** Unique token id. */
  jti: string;
  /** Apps only: what the app may publish and subscribe to. */
  acl?: AppAcl;
  /** Devices only: the envelope suites the device's chip supports, as its fills recorded them (absent: unknown). */
  suites?: number[];
}

export const TOKEN_ERROR_CODES = {
  TOKEN_ERR_MALFORMED: 'token is not a well-formed qk1 token',
  TOKEN_ERR_KEY: 'token is signed with an unknown key',
  TOKEN_ERR_SIGNATURE: 'token signature does not verify',
  TOKEN_ERR_EXPIRED: 'token has expired',
  TOKEN_ERR_NOT_YET_VALID: 'token is issued in the future',
  TOKEN_ERR_REVOKED: 'token subject has been revoked',
} as const;
export type TokenErrorCode = keyof typeof TOKEN_ERROR_CODES;

export class TokenError extends Error {
  readonly code: TokenErrorCode;
  constructor(code: TokenErrorCode) {
    super(TOKEN_ERROR_CODES[code]);
    this.name = 'TokenError';
    this.code = code;
  }
}

const PREFIX = 'qk1.';
const MAX_TOKEN_LENGTH = 4096;
/** Clock skew tolerated between the key service and a broker. */
export const TOKEN_CLOCK_SKEW_SECONDS = 30;

export function signToken(claims: TokenClaims, privateKey: KeyObject): string {
  const body = PREFIX + Buffer.from(JSON.stringify(claims)).toString('base64url');
  return `${body}.${sign(null, Buffer.from(body), privateKey).toString('base64url')}`;
}

const B64URL = /^[A-Za-z0-9_-]+$/;
const ROLES = new Set<TokenRole>(['device', 'app', 'broker']);

function isClaims(x: unknown): x is TokenClaims {
  const c = x as Partial<TokenClaims> | null;
  return (
    typeof c === 'object' &&
    c !== null &&
    c.v === 1 &&
    typeof c.kid === 'string' &&
    typeof c.sub === 'string' &&
    c.sub.length > 0 &&
    ROLES.has(c.role as TokenRole) &&
    Number.isInteger(c.iat) &&
    Number.isInteger(c.exp) &&
    typeof c.jti === 'string' &&
    (c.acl === undefined ||
      (Array.isArray(c.acl.publish) &&
        Array.isArray(c.acl.subscribe) &&
        [...c.acl.publish, ...c.acl.subscribe].every((f) => typeof f === 'string'))) &&
    (c.suites === undefined ||
      (Array.isArray(c.suites) && c.suites.length <= 8 && c.suites.every((s) => Number.isInteger(s))))
  );
}

/**
 * Verifies signature and lifetime; `keys` maps kid to the key service's Ed25519 public keys.
 * Revocation is the caller's concern (it needs the live revocation feed).
 */
export function verifyToken(token: string, keys: ReadonlyMap<string, KeyObject>, nowSeconds: number): TokenClaims {
  if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !token.startsWith(PREFIX)) {
    throw new TokenError('TOKEN_ERR_MALFORMED');
  }
  const parts = token.slice(PREFIX.length).split('.');
  if (parts.length !== 2 || !B64URL.test(parts[0]!) || !B64URL.test(parts[1]!)) {
    throw new TokenError('TOKEN_ERR_MALFORMED');
  }
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
  } catch {
    throw new TokenError('TOKEN_ERR_MALFORMED');
  }
  if (!isClaims(claims)) throw new TokenError('TOKEN_ERR_MALFORMED');
  const key = keys.get(claims.kid);
  if (!key) throw new TokenError('TOKEN_ERR_KEY');
  const body = Buffer.from(PREFIX + parts[0]!);
  if (!verify(null, body, key, Buffer.from(parts[1]!, 'base64url'))) throw new TokenError('TOKEN_ERR_SIGNATURE');
  if (claims.exp <= nowSeconds - TOKEN_CLOCK_SKEW_SECONDS) throw new TokenError('TOKEN_ERR_EXPIRED');
  if (claims.iat > nowSeconds + TOKEN_CLOCK_SKEW_SECONDS) throw new TokenError('TOKEN_ERR_NOT_YET_VALID');
  return claims;
}
