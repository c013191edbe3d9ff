// Admin API (admin group): devices, fill batches, apps, brokers, pool levels and the audit log.
import * as wire from '../../kms-api/admin-schemas.js';
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import { checkedSm2PublicKey } from './app-sessions.js';
import type { BatchRow, ClientRow, DeviceRow, FillKey } from '../store.js';

const ADMIN = 'admin';
/** What an app may publish and subscribe to when its registration names nothing (the console's too). */
export const DEFAULT_APP_ACL = { publish: ['devices/+/down/#'], subscribe: ['devices/+/up/#'] };

/** Admin group. */
export function adminRoutes(app: RouteScope, ctx: KmsContext): void {
  const { store } = ctx;

  const staleBefore = () => Date.now() - ctx.config.stalePendingSeconds * 1000;
  const batchOut = (b: BatchRow) => ({ ...b, suites: b.suites ? (JSON.parse(b.suites) as number[]) : null });
  const view = (d: DeviceRow) => {
    const pool = store.pool(d.device_id);
    const cutoff = staleBefore();
    return {
      ...d,
      has_login_key: d.login_key_item !== null && d.state === 'active',
      pool,
      next_key_index: store.nextKeyIndex(d.device_id),
      low: d.state === 'active' && (pool.up < ctx.config.lowWater || pool.down < ctx.config.lowWater),
      suites: d.suites ? (JSON.parse(d.suites) as number[]) : null,
      pending_batches: store.listBatches(d.device_id, 'pending').map((b) => ({
        batch_id: b.batch_id,
        created_at: b.created_at,
        stale: b.created_at < cutoff,
      })),
    };
  };
  const requireDevice = (deviceId: string) => {
    const d = store.device(deviceId);
    if (!d) throw new KmsError('KMS_ERR_NOT_FOUND', `device ${deviceId}`);
    return d;
  };

  app.post('/api/v1/admin/devices', { schema: wire.registerDeviceRoute }, async (req, reply) => {
    reply.code(201);
    return view(store.registerDevice(req.body.device_id, req.body.serial ?? null, ADMIN));
  });

  app.get('/api/v1/admin/devices', { schema: wire.listDevicesRoute }, async (req) => {
    const limit = req.query.limit ?? 100;
    const rows = store.listDevices(req.query.after ?? '', limit);
    return { devices: rows.map(view), ...(rows.length === limit ? { next: rows[rows.length - 1]!.device_id } : {}) };
  });

  app.get('/api/v1/admin/devices/:device_id', { schema: wire.deviceRoute }, async (req) =>
    view(requireDevice(req.params.device_id)),
  );

  app.post('/api/v1/admin/devices/:device_id/revoke', { schema: wire.revokeDeviceRoute }, async (req) => {
    requireDevice(req.params.device_id);
    const { destroyed } = store.revokeDevice(req.params.device_id, req.body?.reason ?? null, ADMIN);
    return { device_id: req.params.device_id, state: 'revoked' as const, destroyed_keys: destroyed };
  });

  app.get('/api/v1/admin/devices/:device_id/keys', { schema: wire.deviceKeysRoute }, async (req) => {
    requireDevice(req.params.device_id);
    return { keys: store.listKeys(req.params.device_id).map(({ key_id, ...k }) => ({ key_ID: key_id, ...k })) };
  });

  app.post('/api/v1/admin/devices/:device_id/batches', { schema: wire.registerBatchRoute }, async (req, reply) => {
    const { batch_id, login_key, keys, suites } = req.body;
    if (keys.length === 0 && !login_key) throw new KmsError('KMS_ERR_BAD_REQUEST', 'a batch needs keys or a login key');
    if (new Set(keys.map((k) => k.key_index)).size !== keys.length)
      throw new KmsError('KMS_ERR_BAD_REQUEST', 'duplicate key_index in batch');
    const fill: FillKey[] = keys.map((k) => ({
      key_index: k.key_index,
      direction: k.direction,
      key: Buffer.from(k.key, 'base64'),
    }));
    const loginKey = login_key ? Buffer.from(login_key, 'base64') : undefined;
    try {
      const { batch, created } = store.registerBatch(req.params.device_id, batch_id, loginKey, fill, ADMIN, suites);
      reply.code(created ? 201 : 200);
      return batchOut(batch);
    } finally {
      for (const k of fill) k.key.fill(0);
      loginKey?.fill(0);
    }
  });

  app.get(
    '/api/v1/admin/devices/:device_id/batches',
    {
      schema: wire.batchesRoute,
      // An unknown device is a 404 before the query is looked at, as for the device's other routes.
      preValidation: async (req) => void requireDevice((req.params as { device_id: string }).device_id),
    },
    async (req) => {
      return { batches: store.listBatches(req.params.device_id, req.query.state).map(batchOut) };
    },
  );
  app.post('/api/v1/admin/devices/:device_id/batches/:batch_id/commit', { schema: wire.batchRoute }, async (req) =>
    batchOut(store.commitBatch(req.params.device_id, req.params.batch_id, ADMIN)),
  );
  app.post('/api/v1/admin/devices/:device_id/batches/:batch_id/cancel', { schema: wire.batchRoute }, async (req) =>
    batchOut(store.cancelBatch(req.params.device_id, req.params.batch_id, ADMIN)),
  );
  app.get('/api/v1/admin/devices/:device_id/batches/:batch_id', { schema: wire.batchRoute }, async (req) => {
    const b = store.batch(req.params.batch_id);
    if (!b || b.device_id !== req.params.device_id)
      throw new KmsError('KMS_ERR_NOT_FOUND', `batch ${req.params.batch_id}`);
    return batchOut(b);
  });

  const clientView = (c: ClientRow) => ({
    ...c,
    acl: c.acl ? JSON.parse(c.acl) : undefined,
    ...(c.role === 'app' ? { sm2_public_key: ctx.appSessions.sm2PublicKey(c.client_id) ?? null } : {}),
  });

  app.post('/api/v1/admin/apps', { schema: wire.registerAppRoute }, async (req, reply) => {
    const acl = {
      publish: req.body.publish ?? DEFAULT_APP_ACL.publish,
      subscribe: req.body.subscribe ?? DEFAULT_APP_ACL.subscribe,
    };
    // Checked before the app is registered, so a bad key registers nothing.
    const sm2Key = req.body.sm2_public_key ? checkedSm2PublicKey(req.body.sm2_public_key) : undefined;
    const secret = store.registerClient(req.body.app_id, 'app', acl, ADMIN);
    if (sm2Key) ctx.appSessions.setSm2PublicKey(req.body.app_id, sm2Key, ADMIN);
    reply.code(201);
    return { app_id: req.body.app_id, client_secret: secret };
  });
  app.post('/api/v1/admin/brokers', { schema: wire.registerBrokerRoute }, async (req, reply) => {
    const { broker_id, cert_fingerprint, cert_subject } = req.body;
    const secret = store.registerClient(broker_id, 'broker', null, ADMIN, {
      ...(cert_fingerprint ? { fingerprint: cert_fingerprint } : {}),
      ...(cert_subject ? { subject: cert_subject } : {}),
    });
    reply.code(201);
    return { broker_id, client_secret: secret };
  });
  app.get('/api/v1/admin/apps', { schema: wire.listAppsRoute }, async () => ({
    apps: store.listClients('app').map(clientView),
  }));
  app.get('/api/v1/admin/brokers', { schema: wire.listBrokersRoute }, async () => ({
    brokers: store.listClients('broker').map(clientView),
  }));
  app.post('/api/v1/admin/apps/:id/revoke', { schema: wire.revokeAppRoute }, async (req) => {
    store.revokeClient(req.params.id, 'app', ADMIN);
    return { app_id: req.params.id, state: 'revoked' as const };
  });
  app.post('/api/v1/admin/brokers/:id/revoke', { schema: wire.revokeBrokerRoute }, async (req) => {
    store.revokeClient(req.params.id, 'broker', ADMIN);
    return { broker_id: req.params.id, state: 'revoked' as const };
  });

  app.get('/api/v1/admin/pools', { schema: wire.poolsRoute }, async (req) => {
    const lw = ctx.config.lowWater;
    const pools = store.allPools(staleBefore()).map((p) => ({ ...p, low: p.up < lw || p.down < lw }));
    return {
      low_water: lw,
      stale_pending_seconds: ctx.config.stalePendingSeconds,
      pools: req.query.low_only ? pools.filter((p) => p.low) : pools,
    };
  });

  app.get('/api/v1/admin/audit', { schema: wire.auditRoute }, async (req) => {
    const limit = req.query.limit ?? 100;
    const { after = 0, before, device_id = null, action = null } = req.query;
    const rows = store.queryAudit(after, limit, device_id, action, before);
    return {
      entries: rows.map((r) => ({ ...r, detail: r.detail ? JSON.parse(r.detail) : null })),
      ...(rows.length === limit ? { next: rows[rows.length - 1]!.id } : {}),
    };
  });
}
