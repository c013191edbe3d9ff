// The administrators' web console at /console: server-rendered pages over the key store, in two caller groups
// (access.ts): the sign-in page and stylesheet are public, every other page needs a console session (callers.ts).
import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import { callerGroup, type RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import { ConsoleRefusal, hostAllowed, setSecurityHeaders } from './guard.js';
import { consoleLoginRoutes } from './login.js';
import { messagePage, type PageFrame } from './pages.js';
import { consolePageRoutes } from './routes.js';
import { attachConsoleSessions, ConsoleSessions } from './sessions.js';

/** Most console sessions held at once (one per signed-in browser); a new one beyond closes the least recently used. */
export const MAX_CONSOLE_SESSIONS = 64;

/** Form bodies as flat string fields; a field given twice is refused, not guessed at. */
function parseForm(_req: FastifyRequest, body: string, done: (err: Error | null, value?: unknown) => void): void {
  const fields: Record<string, string> = {};
  for (const [name, value] of new URLSearchParams(body)) {
    if (Object.hasOwn(fields, name)) {
      done(new KmsError('KMS_ERR_BAD_REQUEST', `form field ${name} given twice`));
      return;
    }
    fields[name] = value;
  }
  done(null, fields);
}

/** What every console scope shares: its Host check, its headers, its form parser and its HTML errors. */
function consoleScope(scope: RouteScope, ctx: KmsContext): void {
  // Forms only: a JSON or text body is refused (415) before any handler sees it.
  scope.removeAllContentTypeParsers();
  scope.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, parseForm);
  scope.addHook('onRequest', async (req, reply) => {
    setSecurityHeaders(reply);
    if (!hostAllowed(ctx.config, req.headers.host))
      throw new ConsoleRefusal(421, 'the console does not answer to this host name');
  });
  scope.setErrorHandler((err: FastifyError | KmsError | ConsoleRefusal, req, reply) => {
    setSecurityHeaders(reply);
    const frame = (title: string): PageFrame => ({ title, notice: { text: err.message, kind: 'error' } });
    if (err instanceof KmsError && err.code === 'KMS_ERR_UNAUTHORIZED') {
      // No session, or an expired or forged one: pages lead to the sign-in form, forms are refused.
      if (req.method === 'GET' || req.method === 'HEAD')
        return reply.code(303).header('location', '/console/login').send();
      return reply
        .code(401)
        .type('text/html; charset=utf-8')
        .send(
          messagePage(frame('Signed out'), 'Your console session has ended.', {
            href: '/console/login',
            label: 'Sign in again',
          }).text,
        );
    }
    let status: number;
    let title: string;
    if (err instanceof ConsoleRefusal) [status, title] = [err.status, 'Refused'];
    else if (err instanceof KmsError) {
      [status, title] = [err.status, err.status === 429 ? 'Too many attempts' : 'Not done'];
      if (err.retryAfterSeconds !== undefined) reply.header('retry-after', String(err.retryAfterSeconds));
    } else if ((err as FastifyError).code === 'FST_ERR_CTP_BODY_TOO_LARGE') [status, title] = [413, 'Too large'];
    else if ((err as FastifyError).validation || ((err as FastifyError).statusCode ?? 500) < 500)
      [status, title] = [400, 'Not understood'];
    else {
      req.log.error({ err }, 'console: unhandled error');
      return reply
        .code(500)
        .type('text/html; charset=utf-8')
        .send(messagePage({ title: 'Error' }, 'Internal error.').text);
    }
    return reply
      .code(status)
      .type('text/html; charset=utf-8')
      .send(
        messagePage(frame(title), 'Nothing was changed.', { href: '/console/devices', label: 'Back to the console' })
          .text,
      );
  });
}

/** Registers the console on `app` (when config.console.enabled): both its groups under /console. */
export function registerConsole(app: FastifyInstance, ctx: KmsContext, clock: () => number = Date.now): void {
  const c = ctx.config.console;
  attachConsoleSessions(
    ctx,
    new ConsoleSessions(
      { idleMs: c.idleSeconds * 1000, maxMs: c.maxSessionSeconds * 1000, maxSessions: MAX_CONSOLE_SESSIONS },
      clock,
    ),
  );
  const prefix = { prefix: '/console' };
  app.register(
    callerGroup('public', ctx, (scope) => {
      consoleScope(scope, ctx);
      consoleLoginRoutes(scope, ctx);
    }),
    prefix,
  );
  app.register(
    callerGroup('console', ctx, (scope) => {
      consoleScope(scope, ctx);
      consolePageRoutes(scope, ctx);
    }),
    prefix,
  );
}
