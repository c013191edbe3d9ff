// The console's signed-in pages (console group): devices, keys by state, revocations, apps, brokers, policies
// (policy-routes.ts), audit log.
// Each handler is a short list of steps over the key store, as the admin API's are; forms are checked for their
// origin and CSRF token before anything changes.
import { Ajv } from 'ajv';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { registerAppBody, registerBrokerBody } from '../../kms-api/admin-schemas.js';
import { idSchema } from '../../kms-api/common-schemas.js';
import type { RouteScope } from '../access.js';
import type { ConsoleSession } from './sessions.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import type { DeviceRow, PoolLevels } from '../store.js';
import { DEFAULT_APP_ACL } from '../routes/admin.js';
import { readBrokers } from './broker-figures.js';
import { consolePolicyRoutes } from './policy-routes.js';
import { requireCsrfToken, requireSameOrigin } from './guard.js';
import type { Html } from './html.js';
import { sessionCookie } from './login.js';
import {
  auditPage,
  clientsPage,
  confirmRevokePage,
  type DeviceLine,
  devicePage,
  devicesPage,
  type PageFrame,
  type SecretShown,
} from './pages.js';
import { consoleSessions, cookieName, readCookie } from './sessions.js';

/** Who the audit log names for what is done in the console (the admin API's actions are `admin`). */
export const CONSOLE_ACTOR = 'admin:console';
const DEVICES_PER_PAGE = 50;
const AUDIT_PER_PAGE = 50;
/** Devices a search reads through at most per page, so one search costs a bounded time however large the fleet. */
const SEARCH_SCAN_LIMIT = 20_000;

const text = (max: number) => ({ type: 'string', maxLength: max }) as const;
const csrf = { type: 'string', minLength: 1, maxLength: 128 } as const;
const idParams = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: idSchema },
} as const;

function sessionOf(req: FastifyRequest): ConsoleSession {
  if (req.caller?.role !== 'console') throw new Error('console route outside the console group');
  return req.caller.session;
}

const show = (reply: FastifyReply, page: Html, status = 200) =>
  reply.code(status).type('text/html; charset=utf-8').send(page.text);

/** Topic filters typed comma-separated; undefined when none were typed. */
function filters(field: string | undefined): string[] | undefined {
  const list = (field ?? '')
    .split(',')
    .map((f) => f.trim())
    .filter((f) => f !== '');
  return list.length ? list : undefined;
}

/**
 * A form turned into an admin API request body is checked against that route's own schema (kms-api/), so the
 * console accepts exactly what the API accepts: one contract for both.
 */
const ajv = new Ajv({ allErrors: false });
const validAppBody = ajv.compile(registerAppBody);
const validBrokerBody = ajv.compile(registerBrokerBody);
function requireValid<T>(check: ((body: unknown) => boolean) & { errors?: unknown }, body: T): T {
  if (!check(body)) {
    const [first] = (check.errors ?? []) as Array<{ instancePath: string; message?: string }>;
    throw new KmsError('KMS_ERR_BAD_REQUEST', `${first?.instancePath || 'form'} ${first?.message ?? 'is not valid'}`);
  }
  return body;
}

export function consolePageRoutes(app: RouteScope, ctx: KmsContext): void {
  const { store } = ctx;
  const tls = ctx.config.tls !== undefined;
  const lowWater = ctx.config.lowWater;
  const staleBefore = () => Date.now() - ctx.config.stalePendingSeconds * 1000;
  const frame = (req: FastifyRequest, title: string, section: PageFrame['section']) => ({
    title,
    csrf: sessionOf(req).csrf,
    section,
  });

  // Every form: sent by the console's own page (Origin), carrying this session's token (CSRF), before any change.
  // preValidation: after the body is parsed, before its schema is looked at, so a forged form learns nothing more.
  app.addHook('preValidation', async (req) => {
    if (req.method !== 'POST') return;
    requireSameOrigin(req, tls);
    requireCsrfToken((req.body as { csrf?: unknown } | undefined)?.csrf, sessionOf(req).csrf);
  });

  app.get('/', async (_req, reply) => reply.code(303).header('location', '/console/devices').send());

  app.post(
    '/logout',
    { schema: { body: { type: 'object', required: ['csrf'], additionalProperties: false, properties: { csrf } } } },
    async (req, reply) => {
      const cookie = readCookie(req.headers.cookie, cookieName(tls));
      if (cookie !== undefined) consoleSessions(ctx)?.close(cookie);
      return reply
        .code(303)
        .header('set-cookie', sessionCookie(ctx, '', 0))
        .header('location', '/console/login')
        .send();
    },
  );

  // --- devices ---------------------------------------------------------------------------------------------

  const isLow = (d: DeviceRow, pool: PoolLevels) =>
    d.state === 'active' && (pool.up < lowWater || pool.down < lowWater);
  /** A device's row, or undefined when only low pools are wanted and its pool is not low (one query then). */
  const line = (d: DeviceRow, cutoff: number, lowOnly: boolean): DeviceLine | undefined => {
    const pool = store.pool(d.device_id);
    if (lowOnly && !isLow(d, pool)) return undefined;
    const pending = store.listBatches(d.device_id, 'pending');
    return {
      device: d,
      pool,
      low: isLow(d, pool),
      pending: pending.length,
      stalePending: pending.filter((b) => b.created_at < cutoff).length,
      lastSeen: store.lastSeen(d.device_id),
    };
  };

  app.get(
    '/devices',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { q: text(128), low: { enum: ['1'] }, after: text(128) },
        },
      },
    },
    async (req, reply) => {
      const q = req.query.q?.trim() ?? '';
      const low = req.query.low === '1';
      const cutoff = staleBefore();
      const lines: DeviceLine[] = [];
      let after = req.query.after ?? '';
      let scanned = 0;
      // Read the fleet in id order from `after`, keeping matches, until a page is full or the scan bound is hit.
      scan: while (lines.length < DEVICES_PER_PAGE && scanned < SEARCH_SCAN_LIMIT) {
        const rows = store.listDevices(after, 500);
        for (const d of rows) {
          scanned++;
          after = d.device_id;
          if (q && !d.device_id.toLowerCase().includes(q.toLowerCase())) continue;
          const l = line(d, cutoff, low);
          if (!l) continue;
          lines.push(l);
          if (lines.length === DEVICES_PER_PAGE) break scan;
        }
        if (rows.length < 500) break;
      }
      const next = store.listDevices(after, 1).length > 0 ? after : undefined;
      return show(reply, devicesPage(frame(req, 'Devices', '/console/devices'), { q, low }, lines, next, lowWater));
    },
  );

  const requireDevice = (id: string) => {
    const d = store.device(id);
    if (!d) throw new KmsError('KMS_ERR_NOT_FOUND', `device ${id}`);
    return d;
  };

  app.get('/devices/:id', { schema: { params: idParams } }, async (req, reply) => {
    const d = requireDevice(req.params.id);
    const pool = store.pool(d.device_id);
    const cutoff = staleBefore();
    return show(
      reply,
      devicePage(frame(req, `Device ${d.device_id}`, '/console/devices'), {
        device: d,
        pool,
        low: isLow(d, pool),
        lastSeen: store.lastSeen(d.device_id),
        nextKeyIndex: store.nextKeyIndex(d.device_id),
        keys: store.deviceKeyCounts(d.device_id),
        batches: store
          .listBatches(d.device_id)
          .map((b) => ({ ...b, stale: b.state === 'pending' && b.created_at < cutoff })),
      }),
    );
  });

  app.get('/devices/:id/revoke', { schema: { params: idParams } }, async (req, reply) => {
    const d = requireDevice(req.params.id);
    const pool = store.pool(d.device_id);
    if (d.state === 'revoked')
      return reply
        .code(303)
        .header('location', `/console/devices/${encodeURIComponent(d.device_id)}`)
        .send();
    return show(
      reply,
      confirmRevokePage(
        { ...frame(req, `Revoke device ${d.device_id}?`, '/console/devices'), csrf: sessionOf(req).csrf },
        {
          kind: 'device',
          id: d.device_id,
          consequence: `Revoking destroys its ${pool.up + pool.down} unused keys, cancels its pending fill batches, erases its login key and ends its tokens. It cannot be undone.`,
          back: `/console/devices/${encodeURIComponent(d.device_id)}`,
        },
      ),
    );
  });

  app.post(
    '/devices/:id/revoke',
    {
      schema: {
        params: idParams,
        body: {
          type: 'object',
          required: ['csrf'],
          additionalProperties: false,
          properties: { csrf, reason: text(256) },
        },
      },
    },
    async (req, reply) => {
      requireDevice(req.params.id);
      const reason = req.body.reason?.trim() || null;
      store.revokeDevice(req.params.id, reason, CONSOLE_ACTOR);
      // Post/redirect/get: the device's page shows it revoked; reloading it revokes nothing again.
      return reply
        .code(303)
        .header('location', `/console/devices/${encodeURIComponent(req.params.id)}`)
        .send();
    },
  );

  // --- apps and brokers ------------------------------------------------------------------------------------

  const clientsView = async (req: FastifyRequest, kind: 'app' | 'broker', shown?: SecretShown) => {
    const section = kind === 'app' ? '/console/apps' : '/console/brokers';
    const brokers =
      kind === 'broker'
        ? await readBrokers(ctx.config.console.brokerMetrics, ctx.config.console.brokerTimeoutMs)
        : undefined;
    return clientsPage(
      { ...frame(req, kind === 'app' ? 'Apps' : 'Brokers', section), csrf: sessionOf(req).csrf },
      kind,
      store.listClients(kind),
      shown,
      brokers,
    );
  };

  app.get('/apps', async (req, reply) => show(reply, await clientsView(req, 'app')));
  app.get('/brokers', async (req, reply) => show(reply, await clientsView(req, 'broker')));

  app.post(
    '/apps',
    {
      schema: {
        body: {
          type: 'object',
          required: ['csrf', 'id'],
          additionalProperties: false,
          properties: { csrf, id: idSchema, publish: text(4096), subscribe: text(4096) },
        },
      },
    },
    async (req, reply) => {
      const body = requireValid(validAppBody, {
        app_id: req.body.id,
        publish: filters(req.body.publish) ?? DEFAULT_APP_ACL.publish,
        subscribe: filters(req.body.subscribe) ?? DEFAULT_APP_ACL.subscribe,
      });
      const acl = { publish: body.publish, subscribe: body.subscribe };
      const secret = store.registerClient(req.body.id, 'app', acl, CONSOLE_ACTOR);
      // The secret is in this response only: never in a URL, a redirect, the audit log or a log line.
      return show(reply, await clientsView(req, 'app', { kind: 'app', id: req.body.id, secret }), 201);
    },
  );

  app.post(
    '/brokers',
    {
      schema: {
        body: {
          type: 'object',
          required: ['csrf', 'id'],
          additionalProperties: false,
          properties: {
            csrf,
            id: idSchema,
            cert_fingerprint: text(256),
            cert_subject: text(2048),
          },
        },
      },
    },
    async (req, reply) => {
      const fingerprint = req.body.cert_fingerprint?.trim().toUpperCase() || undefined;
      const subject = req.body.cert_subject?.trim() || undefined;
      requireValid(validBrokerBody, {
        broker_id: req.body.id,
        ...(fingerprint ? { cert_fingerprint: fingerprint } : {}),
        ...(subject ? { cert_subject: subject } : {}),
      });
      const secret = store.registerClient(req.body.id, 'broker', null, CONSOLE_ACTOR, {
        ...(fingerprint ? { fingerprint } : {}),
        ...(subject ? { subject } : {}),
      });
      return show(reply, await clientsView(req, 'broker', { kind: 'broker', id: req.body.id, secret }), 201);
    },
  );

  for (const kind of ['app', 'broker'] as const) {
    const base = kind === 'app' ? '/console/apps' : '/console/brokers';
    const requireClient = (id: string) => {
      const c = store.client(id);
      if (!c || c.role !== kind) throw new KmsError('KMS_ERR_NOT_FOUND', `${kind} ${id}`);
      return c;
    };
    app.get(`/${kind}s/:id/revoke`, { schema: { params: idParams } }, async (req, reply) => {
      const c = requireClient(req.params.id);
      if (c.state === 'revoked') return reply.code(303).header('location', base).send();
      return show(
        reply,
        confirmRevokePage(
          { ...frame(req, `Revoke ${kind} ${c.client_id}?`, base), csrf: sessionOf(req).csrf },
          {
            kind,
            id: c.client_id,
            consequence: `The ${kind}'s secret stops working and its tokens are refused from the next revocation poll on. It cannot be undone.`,
            back: base,
          },
        ),
      );
    });
    app.post(
      `/${kind}s/:id/revoke`,
      {
        schema: {
          params: idParams,
          body: { type: 'object', required: ['csrf'], additionalProperties: false, properties: { csrf } },
        },
      },
      async (req, reply) => {
        requireClient(req.params.id);
        store.revokeClient(req.params.id, kind, CONSOLE_ACTOR);
        return reply.code(303).header('location', base).send();
      },
    );
  }

  // --- policies (policy-routes.ts) -------------------------------------------------------------------------

  consolePolicyRoutes(app, ctx, {
    frame: (req, title, section) => ({ ...frame(req, title, section), csrf: sessionOf(req).csrf }),
    show,
    requireValid,
    actor: CONSOLE_ACTOR,
  });

  // --- audit log -------------------------------------------------------------------------------------------

  app.get(
    '/audit',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            before: { type: 'integer', minimum: 1 },
            device: { anyOf: [{ const: '' }, idSchema] },
            action: text(64),
          },
        },
      },
    },
    async (req, reply) => {
      const device = req.query.device ?? '';
      const action = req.query.action?.trim() ?? '';
      const before = req.query.before ?? Number.MAX_SAFE_INTEGER;
      // One entry more than the page shows tells whether there are older ones.
      const rows = store.queryAudit(0, AUDIT_PER_PAGE + 1, device || null, action || null, before);
      const entries = rows.slice(0, AUDIT_PER_PAGE);
      const older = rows.length > AUDIT_PER_PAGE ? entries[entries.length - 1]!.id : undefined;
      return show(
        reply,
        auditPage(
          frame(req, 'Audit log', '/console/audit'),
          { device, action },
          entries,
          older,
          req.query.before !== undefined,
        ),
      );
    },
  );
}
