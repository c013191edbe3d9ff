// Cross-origin calls from web pages (the browser application client, browser/): an explicit allowlist of origins, for
// the three routes that client calls and nothing else. Without a listed origin a page elsewhere cannot read a reply.
//
// The API's credentials are bearer tokens in the Authorization header, never cookies, so no response carries
// Access-Control-Allow-Credentials, and "*" is never sent: every allowed origin is named. A foreign origin's
// preflight is refused (403), and since every one of these routes needs a JSON body (and two a bearer token), a
// browser cannot send them cross-origin without a preflight: a foreign page causes no call at all.
import type { FastifyInstance } from 'fastify';

/** The routes a page's application-session client calls (docs/PROTOCOL.md §22.1). */
export const CORS_PATHS: ReadonlySet<string> = new Set([
  '/api/v1/auth/token',
  '/api/v1/apps/session/challenge',
  '/api/v1/apps/session',
]);
const ALLOWED_HEADERS = new Set(['content-type', 'authorization']);
/** Seconds a browser may cache an allowed preflight. */
const MAX_AGE = 600;

/** An origin as browsers send it: scheme, host and optional port, nothing after. */
export const ORIGIN_PATTERN = '^https?://[A-Za-z0-9.\\-\\[\\]:]+$';

export function registerCors(app: FastifyInstance, origins: readonly string[]): void {
  const allowed = new Set(origins.map((o) => o.toLowerCase()));
  app.addHook('onRequest', async (req, reply) => {
    const origin = req.headers.origin;
    // req.url is already canonical (app.ts rewriteUrl); routes match without regard to case.
    const path = req.url.split('?')[0]!.toLowerCase();
    if (origin === undefined || !CORS_PATHS.has(path)) return;
    const listed = allowed.has(origin.toLowerCase());
    if (req.method === 'OPTIONS') {
      const method = req.headers['access-control-request-method'];
      const headers = String(req.headers['access-control-request-headers'] ?? '')
        .split(',')
        .map((h) => h.trim().toLowerCase())
        .filter((h) => h !== '');
      const ok = listed && method === 'POST' && headers.every((h) => ALLOWED_HEADERS.has(h));
      reply.header('vary', 'Origin');
      if (!ok) return reply.code(403).send();
      return reply
        .code(204)
        .header('access-control-allow-origin', origin)
        .header('access-control-allow-methods', 'POST')
        .header('access-control-allow-headers', 'content-type, authorization')
        .header('access-control-max-age', String(MAX_AGE))
        .send();
    }
    reply.header('vary', 'Origin');
    if (listed) reply.header('access-control-allow-origin', origin);
  });
}
