// Who is calling: each caller group's credential check. Brokers present a broker token, a TLS client certificate
// registered to them, or both naming the same broker; administrators present the admin token, or in the console
// the session cookie that a login with the admin token opened.
import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import { type TokenClaims, TokenError, verifyToken } from '../protocol/index.js';
import { type ConsoleSession, consoleSessions, cookieName, readCookie } from './console/sessions.js';
import type { KmsContext } from './context.js';
import { KmsError } from './errors.js';
import { secretEquals } from './secrets.js';

export type Caller =
  | { role: 'public' }
  | { role: 'admin' }
  | { role: 'app'; id: string }
  | { role: 'broker'; id: string; via: 'token' | 'certificate' | 'token and certificate' }
  | { role: 'console'; session: ConsoleSession };

/** How long a broker found active in the store stays trusted; revoking a broker takes effect within this time. */
const BROKER_RECHECK_MS = 1000;
/** Verified broker tokens, so a busy broker's requests cost one signature check per token, not per request. */
const brokerTokenCache = new WeakMap<KmsContext, Map<string, TokenClaims>>();
const brokerSeenActive = new WeakMap<KmsContext, Map<string, number>>();
/** The broker each TLS connection's client certificate identifies, looked up again after BROKER_RECHECK_MS. */
const certificateBroker = new WeakMap<TLSSocket, { broker: string | undefined; at: number }>();

function unauthorized(detail: string): KmsError {
  return new KmsError('KMS_ERR_UNAUTHORIZED', detail);
}

/**
 * The request's one Authorization header, if any. Node keeps only the first of several; a request carrying two
 * is ambiguous (an intermediary may have read the other), so it is refused. [RFC 9110 §5.3, §11.6.2]
 */
function authorizationHeader(req: FastifyRequest): string | undefined {
  const raw = req.raw.rawHeaders;
  let count = 0;
  for (let i = 0; i < raw.length; i += 2)
    if (raw[i]!.length === 13 && raw[i]!.toLowerCase() === 'authorization') count++;
  if (count > 1) throw unauthorized('more than one Authorization header');
  return req.headers.authorization;
}

/** RFC 6750 §2.1: `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1). */
function bearer(header: string | undefined): string {
  const match = header === undefined ? null : /^Bearer +(\S+) *$/i.exec(header);
  if (!match) throw unauthorized('bearer token required');
  return match[1]!;
}

function mapOf<K extends object, V>(maps: WeakMap<K, Map<string, V>>, owner: K): Map<string, V> {
  let map = maps.get(owner);
  if (!map) maps.set(owner, (map = new Map()));
  return map;
}

/** A valid broker token's claims; device, app and admin tokens are refused (ETSI 014: only this KME's SAEs). */
function brokerTokenClaims(ctx: KmsContext, token: string): TokenClaims {
  const cache = mapOf(brokerTokenCache, ctx);
  const now = Math.floor(Date.now() / 1000);
  let claims = cache.get(token);
  if (!claims || claims.exp <= now) {
    try {
      claims = verifyToken(token, new Map([[ctx.signing.kid, ctx.signing.publicKey]]), now);
    } catch (err) {
      if (err instanceof TokenError) throw unauthorized(err.code);
      throw err;
    }
    if (claims.role !== 'broker') throw unauthorized('a broker credential is required');
    if (cache.size > 1000) cache.clear();
    cache.set(token, claims);
  }
  return claims;
}

function requireActiveBroker(ctx: KmsContext, brokerId: string): void {
  const seen = mapOf(brokerSeenActive, ctx);
  const now = Date.now();
  if ((seen.get(brokerId) ?? 0) + BROKER_RECHECK_MS >= now) return;
  const client = ctx.store.client(brokerId);
  if (!client || client.role !== 'broker' || client.state !== 'active') {
    seen.delete(brokerId);
    throw unauthorized('broker is not registered or was revoked');
  }
  seen.set(brokerId, now);
}

/** RFC 4514 form of a certificate subject (most specific RDN first), as `openssl x509 -nameopt RFC2253` prints. */
export function subjectRfc4514(nodeSubject: string): string {
  return nodeSubject.split('\n').reverse().join(',');
}

/**
 * The broker a verified TLS client certificate identifies, if any. Only certificates that chain to the configured
 * client CA count (`socket.authorized`); the TLS handshake has already proved the client holds the private key.
 */
function brokerFromCertificate(ctx: KmsContext, req: FastifyRequest): string | undefined {
  const socket = req.raw.socket as TLSSocket;
  if (socket.encrypted !== true || socket.authorized !== true) return undefined;
  const now = Date.now();
  const known = certificateBroker.get(socket);
  if (known && known.at + BROKER_RECHECK_MS >= now) return known.broker;
  const cert = socket.getPeerX509Certificate();
  if (!cert) return undefined;
  const matches = ctx.store.clientsByCertificate('broker', cert.fingerprint256, subjectRfc4514(cert.subject));
  if (matches.length > 1) throw unauthorized('the client certificate matches more than one broker');
  certificateBroker.set(socket, { broker: matches[0], at: now });
  return matches[0];
}

/** Broker group: a broker token, a registered client certificate, or both naming the same broker. */
export function authenticateBroker(ctx: KmsContext, req: FastifyRequest): Caller {
  const byCertificate = brokerFromCertificate(ctx, req);
  const header = authorizationHeader(req);
  if (header === undefined) {
    if (byCertificate === undefined)
      throw unauthorized('a broker token or a registered client certificate is required');
    return { role: 'broker', id: byCertificate, via: 'certificate' };
  }
  const claims = brokerTokenClaims(ctx, bearer(header));
  if (byCertificate !== undefined && byCertificate !== claims.sub)
    throw unauthorized('the token and the client certificate name different brokers');
  requireActiveBroker(ctx, claims.sub);
  return { role: 'broker', id: claims.sub, via: byCertificate === undefined ? 'token' : 'token and certificate' };
}

/** App group: a valid app token (docs/PROTOCOL.md §22) of an app still registered and active. */
export function authenticateApp(ctx: KmsContext, req: FastifyRequest): Caller {
  let claims: TokenClaims;
  try {
    claims = verifyToken(
      bearer(authorizationHeader(req)),
      new Map([[ctx.signing.kid, ctx.signing.publicKey]]),
      Math.floor(Date.now() / 1000),
    );
  } catch (err) {
    if (err instanceof TokenError) throw unauthorized(err.code);
    throw err;
  }
  if (claims.role !== 'app') throw unauthorized('an app credential is required');
  const client = ctx.store.client(claims.sub);
  if (!client || client.role !== 'app' || client.state !== 'active')
    throw unauthorized('app is not registered or was revoked');
  return { role: 'app', id: claims.sub };
}

/** The calling app's id; routes of the app group only. */
export function appId(req: FastifyRequest): string {
  const caller = req.caller;
  if (caller?.role !== 'app') throw new Error('appId() outside the app group');
  return caller.id;
}

/** Admin group: the admin bearer token, compared in constant time. */
export function authenticateAdmin(ctx: KmsContext, req: FastifyRequest): Caller {
  const header = authorizationHeader(req);
  if (header === undefined) throw unauthorized('admin token required');
  // A token that was sent but is not the admin token is refused in words of its own, not reported as missing.
  if (!secretEquals(bearer(header), ctx.adminToken)) throw unauthorized('admin token refused');
  return { role: 'admin' };
}

/**
 * Console group: the session cookie of a console login (which checked the admin token as authenticateAdmin does).
 * Bearer tokens are not accepted here, nor the cookie anywhere else: the admin API stays free of ambient credentials.
 */
export function authenticateConsole(ctx: KmsContext, req: FastifyRequest): Caller {
  const sessions = consoleSessions(ctx);
  const cookie = readCookie(req.headers.cookie, cookieName(ctx.config.tls !== undefined));
  const session = sessions && cookie !== undefined ? sessions.find(cookie) : undefined;
  if (!session) throw unauthorized('console session required');
  return { role: 'console', session };
}

/** The calling broker's id; routes of the broker group only (their group hook has set it). */
export function brokerId(req: FastifyRequest): string {
  const caller = req.caller;
  if (caller?.role !== 'broker') throw new Error('brokerId() outside the broker group');
  return caller.id;
}
