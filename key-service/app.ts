// Builds the key service (store, claim queue, routes) as a fastify app that does not listen; server.ts listens.
import { readFileSync } from 'node:fs';
import type { ServerOptions as HttpsServerOptions } from 'node:https';
import type { Writable } from 'node:stream';
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify';
import { callerGroup, refuseUngroupedRoutes } from './access.js';
import { AppSessionStore } from './app-sessions.js';
import { canonicalUrl } from './canonical-url.js';
import { AuditQueue } from './audit-queue.js';
import { ClaimQueue } from './claims.js';
import { registerCors } from './cors.js';
import { endToEndRoutes } from './routes/end-to-end.js';
import type { KmsConfig } from './config.js';
import type { KmsContext } from './context.js';
import { openDataDir } from './data-dir.js';
import type { Db } from './db.js';
import { KMS_ERRORS, KmsError, type KmsErrorCode } from './errors.js';
import { ChallengeBook } from './login.js';
import { LoginLimiter } from './login-limits.js';
import { loadMasterKey } from './master-key.js';
import { registerConsole } from './console/plugin.js';
import { PolicyStore } from './policy-store.js';
import { lazyRequestLogger } from './request-logger.js';
import { createKmsMetrics } from './metrics.js';
import { adminRoutes } from './routes/admin.js';
import { adminAppSessionRoutes, appSessionRoutes, brokerAppKeyRoutes } from './routes/app-sessions.js';
import { authRoutes } from './routes/auth.js';
import { bulkRoutes } from './routes/bulk.js';
import { etsiRoutes } from './routes/etsi.js';
import { opsRoutes } from './routes/ops.js';
import { adminPolicyRoutes, brokerPolicyRoutes } from './routes/policies.js';
import { revocationRoutes } from './routes/revocations.js';
import { loadAdminToken, loadSigningKey } from './secrets.js';
import { KeyStore } from './store.js';

export { DB_FILE } from './data-dir.js';

/** Longest time a request may take to arrive, headers and body (Node checks every 30 s, so up to 30 s more). */
export const REQUEST_TIMEOUT_MS = 30_000;
/** Longest time a request's headers may take to arrive. */
export const HEADERS_TIMEOUT_MS = 10_000;

/** Log fields that could carry secrets; pino replaces them with "[redacted]". */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  '*.key',
  '*.login_key',
  '*.client_secret',
  '*.access_token',
  '*.mac',
  '*.challenge',
];

export interface Kms {
  app: FastifyInstance;
  context: KmsContext;
  close(): Promise<void>;
}

export interface BuildOptions {
  /** Where logs go (default: stdout); tests pass a capture stream. */
  logStream?: Writable;
  /** The clock login limits and challenges run on (default Date.now); tests pass a controllable one. */
  clock?: () => number;
}

/** TLS server options; with a client CA, clients are asked for a certificate, which identifies a broker. */
function httpsOptions(tls: NonNullable<KmsConfig['tls']>): HttpsServerOptions {
  return {
    // PEM files, as in the broker's configuration (checked readable when the configuration was loaded).
    cert: readFileSync(tls.cert),
    key: readFileSync(tls.key),
    ...(tls.ca
      ? {
          ca: readFileSync(tls.ca),
          requestCert: true,
          // Optional certificates are still verified: only one that chains to `ca` counts (callers.ts).
          rejectUnauthorized: tls.requireClientCert === true,
        }
      : {}),
  };
}

function errorBody(code: KmsErrorCode, message: string, details: Array<Record<string, unknown>> = []) {
  return { message, code, details };
}

/**
 * Routine request lines ("incoming request", "request completed") at debug: at info a broker's revocation poll
 * alone wrote two lines a second. Failed requests keep fastify's levels, and the error handler warns on 5xx.
 */
class QuietRequestLog extends LogController {
  override incomingRequest(request: FastifyRequest): void {
    request.log.debug({ req: request }, 'incoming request');
  }
  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (error) super.requestCompleted(error, request, reply);
    else reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }
}

export async function buildKms(config: Readonly<KmsConfig>, options: BuildOptions = {}): Promise<Kms> {
  const db = openDataDir(config.dataDir);
  try {
    return build(db, config, options);
  } catch (err) {
    db.close();
    throw err;
  }
}

function build(db: Db, config: Readonly<KmsConfig>, options: BuildOptions): Kms {
  const master = loadMasterKey(db, config.dataDir);
  const store = new KeyStore(db, master);
  const metrics = createKmsMetrics(store, config.lowWater);
  const policies = new PolicyStore(db, (...audit) => store.audit(...audit));
  const claims = new ClaimQueue(
    store,
    config.claimBatchMax,
    {
      onBatch: (size, seconds) => {
        metrics.batchSize.observe(size);
        metrics.commitSeconds.observe(seconds);
      },
      onClaim: (kind, result, keys) => {
        metrics.claims.inc({ api: kind === 'dec' ? 'dec_keys' : 'enc_keys', result });
        if (keys) metrics.keysDelivered.inc(keys);
      },
    },
    (deviceId, topic) => policies.endToEndApp(deviceId, topic),
  );
  const audits = new AuditQueue(store);
  const context: KmsContext = {
    config,
    store,
    claims,
    audits,
    signing: loadSigningKey(db, master),
    adminToken: loadAdminToken(config.dataDir, config.adminToken),
    challenges: new ChallengeBook(
      config.challengeTtl * 1000,
      config.loginLimits.openChallengesPerSource,
      config.loginLimits.maxOpenChallenges,
      options.clock,
    ),
    limiter: new LoginLimiter(config.loginLimits, options.clock),
    metrics,
    policies,
    appSessions: new AppSessionStore(db, master, (...audit) => store.audit(...audit), options.clock),
    appChallenges: new ChallengeBook(
      config.challengeTtl * 1000,
      config.loginLimits.openChallengesPerSource,
      config.loginLimits.maxOpenChallenges,
      options.clock,
    ),
  };

  const app = Fastify({
    logger: {
      level: config.logLevel,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      ...(options.logStream ? { stream: options.logStream } : {}),
    },
    bodyLimit: config.bodyLimit,
    logController: new QuietRequestLog(),
    childLoggerFactory: lazyRequestLogger,
    // A request that stalls after its headers (a slow or never-sent body) must not hold its connection forever:
    // fastify's default is no limit, so a few thousand such connections from anyone used up the process's files.
    requestTimeout: REQUEST_TIMEOUT_MS,
    // Every spelling of a route's path reaches that route (and its group's credential check), or nothing does.
    rewriteUrl: (req) => canonicalUrl(req.url ?? '/'),
    // A path parameter is an id (128 characters) or a batch id (256), each ':' percent-encoded as 3: fastify's
    // default of 100 refused the longest valid ids (docs/PROTOCOL.md §14) before any route saw them.
    routerOptions: { caseSensitive: false, maxParamLength: 3 * 256 },
    // The source address login limits key on: the peer's, unless it is a listed proxy (then X-Forwarded-For's
    // right-most address not itself a listed proxy). Never `true`: anyone could then choose their address.
    trustProxy: config.trustProxy.length ? [...config.trustProxy] : false,
    ...(config.tls ? { https: httpsOptions(config.tls) } : {}),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  });

  app.setErrorHandler((err: FastifyError | KmsError, req, reply) => {
    let status: number;
    let body: ReturnType<typeof errorBody>;
    if (err instanceof KmsError) {
      status = err.status;
      body = errorBody(err.code, err.message, err.details);
      if (err.retryAfterSeconds !== undefined) reply.header('retry-after', String(err.retryAfterSeconds));
    } else if ((err as FastifyError).validation) {
      status = 400;
      body = errorBody('KMS_ERR_BAD_REQUEST', `${KMS_ERRORS.KMS_ERR_BAD_REQUEST.message}: ${err.message}`, [
        { validation: (err as FastifyError).validationContext ?? 'body' },
      ]);
    } else if ((err as FastifyError).code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      status = 413;
      body = errorBody('KMS_ERR_TOO_LARGE', KMS_ERRORS.KMS_ERR_TOO_LARGE.message);
    } else if ((err as FastifyError).statusCode && (err as FastifyError).statusCode! < 500) {
      // Fastify's own 4xx: unparsable JSON, wrong content type, empty body.
      status = 400;
      body = errorBody('KMS_ERR_BAD_REQUEST', `${KMS_ERRORS.KMS_ERR_BAD_REQUEST.message}: ${err.message}`);
    } else {
      req.log.error({ err }, 'unhandled error');
      status = 500;
      body = errorBody('KMS_ERR_INTERNAL', KMS_ERRORS.KMS_ERR_INTERNAL.message);
    }
    metrics.errors.inc({ code: body.code });
    if (status >= 500) req.log.warn({ code: body.code }, body.message);
    reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    metrics.errors.inc({ code: 'KMS_ERR_NOT_FOUND' });
    reply
      .code(404)
      .send(
        errorBody(
          'KMS_ERR_NOT_FOUND',
          `${KMS_ERRORS.KMS_ERR_NOT_FOUND.message}: ${req.method} ${req.url.split('?')[0]}`,
        ),
      );
  });

  app.server.headersTimeout = HEADERS_TIMEOUT_MS;

  registerCors(app, config.corsOrigins);
  // Who may call a route is decided by the group it is registered in, never by its URL.
  refuseUngroupedRoutes(app);
  app.register(
    callerGroup('public', context, (scope) => {
      opsRoutes(scope, context);
      authRoutes(scope, context);
    }),
  );
  app.register(
    callerGroup('broker', context, (scope) => {
      etsiRoutes(scope, context);
      bulkRoutes(scope, context);
      revocationRoutes(scope, context);
      brokerPolicyRoutes(scope, context);
      brokerAppKeyRoutes(scope, context);
    }),
  );
  app.register(
    callerGroup('admin', context, (scope) => {
      adminRoutes(scope, context);
      adminPolicyRoutes(scope, context);
      adminAppSessionRoutes(scope, context);
    }),
  );
  app.register(
    callerGroup('app', context, (scope) => {
      appSessionRoutes(scope, context);
      endToEndRoutes(scope, context);
    }),
  );
  // The administrators' web console: its own two groups under /console, off unless configured (console/plugin.ts).
  if (config.console.enabled) registerConsole(app, context, options.clock);

  let closed = false;
  return {
    app,
    context,
    async close() {
      if (closed) return;
      closed = true;
      await app.close();
      claims.close();
      audits.flush();
      master.destroy();
      db.close();
    },
  };
}
