// The console's request guards: Host names it answers to, same-origin POSTs, the session's CSRF token, and the
// response headers that keep its pages out of frames, caches and other origins' reach.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { isLoopback, type KmsConfig } from '../config.js';
import { secretEquals } from '../secrets.js';

/**
 * Content-Security-Policy of every console response: nothing but the service's own stylesheet loads, no script at
 * all (the console has none), forms post only to the service, and no other page may frame it. [CSP Level 3 §6]
 */
export const CONSOLE_CSP =
  "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

export const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CONSOLE_CSP,
  'x-frame-options': 'DENY', // for browsers without frame-ancestors [RFC 7034]
  'x-content-type-options': 'nosniff',
  // Not no-referrer: under it a browser sends `Origin: null` with the console's own forms (Fetch §3.2.5), which are then refused.
  'referrer-policy': 'same-origin',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  // Pages show secrets (a new client secret) and fleet state: no cache may keep them. [RFC 9111 §5.2.2.5]
  'cache-control': 'no-store',
};

export function setSecurityHeaders(reply: FastifyReply): void {
  for (const [name, value] of Object.entries(SECURITY_HEADERS)) reply.header(name, value);
}

/** A refusal of the console's own (its pages show the message; the JSON API never raises these). */
export class ConsoleRefusal extends Error {
  constructor(
    readonly status: 403 | 421,
    message: string,
  ) {
    super(message);
    this.name = 'ConsoleRefusal';
  }
}

const forbidden = (detail: string) => new ConsoleRefusal(403, detail);

/** The Host header's name without its port, lower case; '' when missing or malformed. */
function hostName(host: string | undefined): string {
  if (!host) return '';
  const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.exec(host);
  return match ? match[1]!.toLowerCase().replace(/^\[(.*)\]$/, '$1') : '';
}

/**
 * Host names the console answers to: the listen host, loopback names when it listens on loopback, and those
 * configured. Any other Host is a page reached through a name the administrator did not give it, as in DNS
 * rebinding, where another site's script reads the console's answers under its own origin. [RFC 9110 §7.2]
 */
export function hostAllowed(config: Readonly<KmsConfig>, host: string | undefined): boolean {
  const name = hostName(host);
  if (name === '') return false;
  if (name === config.host.toLowerCase() || config.console.hostnames.some((h) => h.toLowerCase() === name)) return true;
  return isLoopback(config.host) && isLoopback(name);
}

/**
 * A state-changing request must come from the console's own pages: its Origin is this service's origin
 * (RFC 6454 §7; browsers send it on every POST), or, without Origin, Sec-Fetch-Site says same-origin.
 */
export function requireSameOrigin(req: FastifyRequest, tls: boolean): void {
  const origin = req.headers.origin;
  if (origin !== undefined) {
    if (origin !== `${tls ? 'https' : 'http'}://${req.headers.host ?? ''}`)
      throw forbidden('cross-origin form submission');
    return;
  }
  if (req.headers['sec-fetch-site'] !== 'same-origin') throw forbidden('form submission without a same-origin Origin');
}

/** The form's synchronizer token must be the session's (OWASP CSRF Prevention Cheat Sheet), in constant time. */
export function requireCsrfToken(presented: unknown, expected: string): void {
  if (typeof presented !== 'string' || !secretEquals(presented, expected))
    throw forbidden('missing or wrong CSRF token');
}
