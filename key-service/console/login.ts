// The console's public routes: the sign-in form, signing in with the admin token, and the stylesheet.
import type { FastifyReply } from 'fastify';
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';
import { secretEquals } from '../secrets.js';
import { requireSameOrigin } from './guard.js';
import { loginPage, messagePage } from './pages.js';
import { consoleSessions, cookieName } from './sessions.js';
import { CONSOLE_CSS } from './style.js';

/** The login limiter's subject for console sign-ins: one subject, so failures from everywhere add up. */
const SUBJECT = 'console:admin';

const loginBody = {
  type: 'object',
  required: ['token'],
  additionalProperties: false,
  properties: { token: { type: 'string', minLength: 1, maxLength: 512 } },
} as const;

/**
 * The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's request carries it), Path
 * limited to the console, Secure under TLS; no Max-Age, so it ends with the browser. [RFC 6265bis §4.1.2]
 */
export function sessionCookie(ctx: KmsContext, value: string, maxAge?: 0): string {
  const tls = ctx.config.tls !== undefined;
  return [
    `${cookieName(tls)}=${value}`,
    'Path=/console',
    'HttpOnly',
    'SameSite=Strict',
    ...(tls ? ['Secure'] : []),
    ...(maxAge === 0 ? ['Max-Age=0'] : []),
  ].join('; ');
}

const sendPage = (reply: FastifyReply, status: number, text: string) =>
  reply.code(status).type('text/html; charset=utf-8').send(text);

export function consoleLoginRoutes(app: RouteScope, ctx: KmsContext): void {
  // Any other /console path: an HTML 404 with the console's headers (one handler per prefix, so it lives here).
  app.setNotFoundHandler(async (_req, reply) =>
    sendPage(
      reply,
      404,
      messagePage({ title: 'Not found' }, 'No such console page.', { href: '/console/devices', label: 'Devices' }).text,
    ),
  );

  app.get('/console.css', async (_req, reply) => reply.type('text/css; charset=utf-8').send(CONSOLE_CSS));

  app.get('/login', async (_req, reply) => sendPage(reply, 200, loginPage().text));

  app.post('/login', { schema: { body: loginBody } }, async (req, reply) => {
    requireSameOrigin(req, ctx.config.tls !== undefined);
    // The same limiter as device and client logins (login-limits.ts): backoff per source, then for the subject.
    const attempt = ctx.limiter.attempt(SUBJECT, req.ip);
    if (!attempt.ok) {
      ctx.metrics.logins.inc({ grant: 'console', result: 'limited' });
      reply.header('retry-after', String(attempt.retryAfterSeconds));
      const wait = `Too many failed sign-ins from here: try again in ${attempt.retryAfterSeconds} s.`;
      return sendPage(reply, 429, loginPage({ text: wait, kind: 'error' }).text);
    }
    // The admin API's own check (callers.ts authenticateAdmin): constant-time against the service's admin token.
    if (!secretEquals(req.body.token, ctx.adminToken)) {
      attempt.failed();
      ctx.metrics.logins.inc({ grant: 'console', result: 'failed' });
      ctx.store.audit('admin:console', 'login.failed', null, { grant: 'console', source: req.ip });
      return sendPage(reply, 401, loginPage({ text: 'That is not the admin token.', kind: 'error' }).text);
    }
    attempt.succeeded();
    ctx.metrics.logins.inc({ grant: 'console', result: 'ok' });
    ctx.store.audit('admin:console', 'login', null, { grant: 'console', source: req.ip });
    const { cookie } = consoleSessions(ctx)!.open();
    return reply
      .code(303)
      .header('set-cookie', sessionCookie(ctx, cookie))
      .header('location', '/console/devices')
      .send();
  });
}
