// Admin API (admin bearer token): devices, fill batches, apps, brokers, pool levels and the audit log.
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import type { DeviceRow, FillKey } from '../store.js';
import { base64Key128, batchView, deviceView, errorResponses, idSchema } from './schemas.js';

const ADMIN = 'admin';
const MAX_KEYS_PER_BATCH = 4096;
const DEFAULT_APP_ACL = { publish: ['devices/+/down/#'], subscribe: ['devices/+/up/#'] };

const deviceParams = { type: 'object', required: ['device_id'], properties: { device_id: idSchema } } as const;
const batchParams = {
  type: 'object',
  required: ['device_id', 'batch_id'],
  properties: { device_id: idSchema, batch_id: idSchema },
} as const;
const topicFilter = { type: 'string', minLength: 1, maxLength: 1024, pattern: '^[^\\u0000]*$' } as const;

/** Admin group. */
export function adminRoutes(app: RouteScope, ctx: KmsContext): void {
  const { store } = ctx;

  const view = (d: DeviceRow) => {
    const pool = store.pool(d.device_id);
    return {
      ...d,
      has_login_key: d.login_key_item !== null && d.state === 'active',
      pool,
      next_key_index: store.nextKeyIndex(d.device_id),
      low: d.state === 'active' && (pool.up < ctx.config.lowWater || pool.down < ctx.config.lowWater),
    };
  };

  app.post<{ Body: { device_id: string; serial?: string } }>(
    '/api/v1/admin/devices',
    {
      schema: {
        body: {
          type: 'object',
          required: ['device_id'],
          additionalProperties: false,
          properties: { device_id: idSchema, serial: { type: 'string', minLength: 1, maxLength: 128 } },
        },
        response: { 201: deviceView, ...errorResponses },
      },
    },
    async (req, reply) => {
      reply.code(201);
      return view(store.registerDevice(req.body.device_id, req.body.serial ?? null, ADMIN));
    },
  );

  app.get<{ Querystring: { after?: string; limit?: number } }>(
    '/api/v1/admin/devices',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            after: { type: 'string', maxLength: 128 },
            limit: { type: 'integer', minimum: 1, maximum: 1000 },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: { devices: { type: 'array', items: deviceView }, next: { type: 'string' } },
          },
          ...errorResponses,
        },
      },
    },
    async (req) => {
      const limit = req.query.limit ?? 100;
      const rows = store.listDevices(req.query.after ?? '', limit);
      return { devices: rows.map(view), ...(rows.length === limit ? { next: rows[rows.length - 1]!.device_id } : {}) };
    },
  );

  app.get<{ Params: { device_id: string } }>(
    '/api/v1/admin/devices/:device_id',
    { schema: { params: deviceParams, response: { 200: deviceView, ...errorResponses } } },
    async (req) => {
      const d = store.device(req.params.device_id);
      if (!d) throw new KmsError('KMS_ERR_NOT_FOUND', `device ${req.params.device_id}`);
      return view(d);
    },
  );

  app.post<{ Params: { device_id: string }; Body: { reason?: string } }>(
    '/api/v1/admin/devices/:device_id/revoke',
    {
      schema: {
        params: deviceParams,
        body: {
          type: ['object', 'null'],
          additionalProperties: false,
          properties: { reason: { type: 'string', maxLength: 256 } },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              device_id: { type: 'string' },
              state: { type: 'string' },
              destroyed_keys: { type: 'integer' },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (req) => {
      if (!store.device(req.params.device_id))
        throw new KmsError('KMS_ERR_NOT_FOUND', `device ${req.params.device_id}`);
      const { destroyed } = store.revokeDevice(req.params.device_id, req.body?.reason ?? null, ADMIN);
      return { device_id: req.params.device_id, state: 'revoked', destroyed_keys: destroyed };
    },
  );

  app.get<{ Params: { device_id: string } }>(
    '/api/v1/admin/devices/:device_id/keys',
    {
      schema: {
        params: deviceParams,
        response: {
          200: {
            type: 'object',
            properties: {
              keys: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    key_ID: { type: 'string' },
                    key_index: { type: 'integer' },
                    direction: { type: 'string' },
                    state: { type: 'string' },
                    batch_id: { type: 'string' },
                    claimed_by: { type: ['string', 'null'] },
                    claimed_session: { type: ['string', 'null'] },
                    claimed_at: { type: ['integer', 'null'] },
                    retired_at: { type: ['integer', 'null'] },
                    destroyed_at: { type: ['integer', 'null'] },
                  },
                },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (req) => {
      if (!store.device(req.params.device_id))
        throw new KmsError('KMS_ERR_NOT_FOUND', `device ${req.params.device_id}`);
      return { keys: store.listKeys(req.params.device_id).map(({ key_id, ...k }) => ({ key_ID: key_id, ...k })) };
    },
  );

  app.post<{
    Params: { device_id: string };
    Body: {
      batch_id: string;
      login_key?: string;
      keys: Array<{ key_index: number; direction: 'up' | 'down'; key: string }>;
    };
  }>(
    '/api/v1/admin/devices/:device_id/batches',
    {
      schema: {
        params: deviceParams,
        body: {
          type: 'object',
          required: ['batch_id', 'keys'],
          additionalProperties: false,
          properties: {
            batch_id: idSchema,
            login_key: base64Key128,
            keys: {
              type: 'array',
              maxItems: MAX_KEYS_PER_BATCH,
              items: {
                type: 'object',
                required: ['key_index', 'direction', 'key'],
                additionalProperties: false,
                properties: {
                  key_index: { type: 'integer', minimum: 0, maximum: 0xffffffff },
                  direction: { enum: ['up', 'down'] },
                  key: base64Key128,
                },
              },
            },
          },
        },
        response: { 200: batchView, 201: batchView, ...errorResponses },
      },
    },
    async (req, reply) => {
      const { batch_id, login_key, keys } = req.body;
      if (keys.length === 0 && !login_key)
        throw new KmsError('KMS_ERR_BAD_REQUEST', 'a batch needs keys or a login key');
      if (new Set(keys.map((k) => k.key_index)).size !== keys.length)
        throw new KmsError('KMS_ERR_BAD_REQUEST', 'duplicate key_index in batch');
      const fill: FillKey[] = keys.map((k) => ({
        key_index: k.key_index,
        direction: k.direction,
        key: Buffer.from(k.key, 'base64'),
      }));
      const loginKey = login_key ? Buffer.from(login_key, 'base64') : undefined;
      try {
        const { batch, created } = store.registerBatch(req.params.device_id, batch_id, loginKey, fill, ADMIN);
        reply.code(created ? 201 : 200);
        return batch;
      } finally {
        for (const k of fill) k.key.fill(0);
        loginKey?.fill(0);
      }
    },
  );

  for (const action of ['commit', 'cancel'] as const) {
    app.post<{ Params: { device_id: string; batch_id: string } }>(
      `/api/v1/admin/devices/:device_id/batches/:batch_id/${action}`,
      { schema: { params: batchParams, response: { 200: batchView, ...errorResponses } } },
      async (req) =>
        action === 'commit'
          ? store.commitBatch(req.params.device_id, req.params.batch_id, ADMIN)
          : store.cancelBatch(req.params.device_id, req.params.batch_id, ADMIN),
    );
  }

  app.get<{ Params: { device_id: string; batch_id: string } }>(
    '/api/v1/admin/devices/:device_id/batches/:batch_id',
    { schema: { params: batchParams, response: { 200: batchView, ...errorResponses } } },
    async (req) => {
      const b = store.batch(req.params.batch_id);
      if (!b || b.device_id !== req.params.device_id)
        throw new KmsError('KMS_ERR_NOT_FOUND', `batch ${req.params.batch_id}`);
      return b;
    },
  );

  const clientView = {
    type: 'object',
    properties: {
      client_id: { type: 'string' },
      role: { type: 'string' },
      state: { type: 'string' },
      created_at: { type: 'integer' },
      revoked_at: { type: ['integer', 'null'] },
      acl: {
        type: 'object',
        properties: {
          publish: { type: 'array', items: { type: 'string' } },
          subscribe: { type: 'array', items: { type: 'string' } },
        },
      },
    },
  } as const;

  for (const role of ['app', 'broker'] as const) {
    const plural = `${role}s`;
    const idField = `${role}_id`;
    app.post<{ Body: Record<string, unknown> }>(
      `/api/v1/admin/${plural}`,
      {
        schema: {
          body: {
            type: 'object',
            required: [idField],
            additionalProperties: false,
            properties: {
              [idField]: idSchema,
              ...(role === 'app'
                ? {
                    publish: { type: 'array', maxItems: 64, items: topicFilter },
                    subscribe: { type: 'array', maxItems: 64, items: topicFilter },
                  }
                : {}),
            },
          },
          response: {
            201: { type: 'object', properties: { [idField]: { type: 'string' }, client_secret: { type: 'string' } } },
            ...errorResponses,
          },
        },
      },
      async (req, reply) => {
        const id = req.body[idField] as string;
        const acl =
          role === 'app'
            ? {
                publish: (req.body.publish as string[]) ?? DEFAULT_APP_ACL.publish,
                subscribe: (req.body.subscribe as string[]) ?? DEFAULT_APP_ACL.subscribe,
              }
            : null;
        const secret = store.registerClient(id, role, acl, ADMIN);
        reply.code(201);
        // The one response that carries the secret; it is stored only as a salted scrypt hash.
        return { [idField]: id, client_secret: secret };
      },
    );
    app.get(
      `/api/v1/admin/${plural}`,
      {
        schema: {
          response: {
            200: { type: 'object', properties: { [plural]: { type: 'array', items: clientView } } },
            ...errorResponses,
          },
        },
      },
      async () => ({
        [plural]: store.listClients(role).map((c) => ({ ...c, acl: c.acl ? JSON.parse(c.acl) : undefined })),
      }),
    );
    app.post<{ Params: { id: string } }>(
      `/api/v1/admin/${plural}/:id/revoke`,
      {
        schema: {
          params: { type: 'object', required: ['id'], properties: { id: idSchema } },
          response: {
            200: { type: 'object', properties: { [idField]: { type: 'string' }, state: { type: 'string' } } },
            ...errorResponses,
          },
        },
      },
      async (req) => {
        store.revokeClient(req.params.id, role, ADMIN);
        return { [idField]: req.params.id, state: 'revoked' };
      },
    );
  }

  app.get<{ Querystring: { low_only?: boolean } }>(
    '/api/v1/admin/pools',
    {
      schema: {
        querystring: { type: 'object', additionalProperties: false, properties: { low_only: { type: 'boolean' } } },
        response: {
          200: {
            type: 'object',
            properties: {
              low_water: { type: 'integer' },
              pools: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    device_id: { type: 'string' },
                    up: { type: 'integer' },
                    down: { type: 'integer' },
                    low: { type: 'boolean' },
                  },
                },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (req) => {
      const lw = ctx.config.lowWater;
      const pools = store.allPools().map((p) => ({ ...p, low: p.up < lw || p.down < lw }));
      return { low_water: lw, pools: req.query.low_only ? pools.filter((p) => p.low) : pools };
    },
  );

  app.get<{ Querystring: { after?: number; limit?: number; device_id?: string; action?: string } }>(
    '/api/v1/admin/audit',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            after: { type: 'integer', minimum: 0 },
            limit: { type: 'integer', minimum: 1, maximum: 1000 },
            device_id: idSchema,
            action: { type: 'string', maxLength: 64 },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              entries: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    id: { type: 'integer' },
                    at: { type: 'integer' },
                    actor: { type: 'string' },
                    action: { type: 'string' },
                    device_id: { type: ['string', 'null'] },
                    detail: { type: ['object', 'null'], additionalProperties: true },
                  },
                },
              },
              next: { type: 'integer' },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (req) => {
      const limit = req.query.limit ?? 100;
      const rows = store.queryAudit(req.query.after ?? 0, limit, req.query.device_id ?? null, req.query.action ?? null);
      return {
        entries: rows.map((r) => ({ ...r, detail: r.detail ? JSON.parse(r.detail) : null })),
        ...(rows.length === limit ? { next: rows[rows.length - 1]!.id } : {}),
      };
    },
  );
}
