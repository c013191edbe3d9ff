// Bulk extension routes (not in ETSI GS QKD 014), broker group: many devices' claims or retirements in one request,
// each item handled exactly as its single ETSI 014 route would handle it, on its own (docs/KMS-API.md).
import type { FastifyRequest } from 'fastify';
import * as wire from '../../kms-api/bulk-schemas.js';
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import { abandonKeys } from '../abandon.js';
import { brokerId } from '../callers.js';
import { decKeysPost, encKeys, retireKeys } from './etsi.js';

type ItemError = { error: wire.BulkItemError };

/**
 * An item's refusal, as its single route's error body. Anything but a KmsError is unexpected: logged, and answered
 * with the bare internal error code, as the service's error handler answers a single request.
 */
function itemError(ctx: KmsContext, req: FastifyRequest, err: unknown): ItemError {
  if (err instanceof KmsError) ctx.metrics.errors.inc({ code: err.code });
  if (err instanceof KmsError)
    return { error: { status: err.status, code: err.code, message: err.message, details: err.details } };
  req.log.error({ err }, 'unhandled error in a bulk item');
  const internal = new KmsError('KMS_ERR_INTERNAL');
  return { error: { status: internal.status, code: internal.code, message: internal.message, details: [] } };
}

/**
 * Runs `one` (itself a transaction, so a savepoint here) for each item inside one transaction: one fsync for the
 * request, and an item refused with a KmsError is rolled back alone and answered with its error.
 */
function retiredEach<T>(
  ctx: KmsContext,
  req: FastifyRequest,
  items: T[],
  one: (item: T) => number,
): Array<{ retired: number } | ItemError> {
  return ctx.store.db.transaction(() =>
    items.map((item) => {
      try {
        return { retired: one(item) };
      } catch (err) {
        if (err instanceof KmsError) return itemError(ctx, req, err);
        throw err;
      }
    }),
  )();
}

/** Broker group. */
export function bulkRoutes(app: RouteScope, ctx: KmsContext): void {
  // Each item goes to the claim queue on its own, in this same turn: the queue commits them in one transaction, each
  // in its own savepoint, so one device's refusal (revoked, superseded, bad proof) rolls back that item alone.
  app.post('/api/v1/bulk/claims', { schema: wire.bulkClaimsRoute, bodyLimit: wire.BULK_BODY_LIMIT }, async (req) => {
    const settled = await Promise.allSettled(
      req.body.claims.map((item) =>
        item.enc_keys
          ? encKeys(ctx, req, item.SAE_ID, item.enc_keys)
          : decKeysPost(ctx, req, item.SAE_ID, item.dec_keys!),
      ),
    );
    return {
      results: settled.map((s) => (s.status === 'fulfilled' ? { keys: s.value.keys } : itemError(ctx, req, s.reason))),
    };
  });

  // One transaction for the whole request (one fsync), each item in its own savepoint (better-sqlite3 nests
  // transactions as savepoints): an unknown device is that item's error, the others are retired.
  app.post(
    '/api/v1/bulk/retirements',
    { schema: wire.bulkRetireRoute, bodyLimit: wire.BULK_BODY_LIMIT },
    async (req) => {
      const one = ctx.store.db.transaction((item: wire.BulkRetireItem) =>
        retireKeys(
          ctx,
          req,
          item.SAE_ID,
          item.key_IDs.map((k) => k.key_ID),
        ),
      );
      return { results: retiredEach(ctx, req, req.body.retirements, one) };
    },
  );

  // Keys whose claim's answer the broker never got (abandon.ts): one transaction, each item in its own savepoint.
  app.post('/api/v1/bulk/abandons', { schema: wire.bulkAbandonRoute, bodyLimit: wire.BULK_BODY_LIMIT }, async (req) => {
    const broker = brokerId(req);
    const now = Date.now();
    const one = ctx.store.db.transaction((item: wire.BulkAbandonItem) => {
      ctx.store.requireDevice(item.SAE_ID);
      return abandonKeys(
        ctx.store,
        {
          deviceId: item.SAE_ID,
          brokerId: broker,
          keys: (item.key_IDs ?? []).map((k) => ({
            keyId: k.key_ID,
            ...(k.qkey_proof ? { proof: proofOf(k.qkey_proof) } : {}),
          })),
          ...(item.downlink_session_id === undefined ? {} : { downlinkSessionId: item.downlink_session_id }),
          endToEndApp: (deviceId, topic) => ctx.policies.endToEndApp(deviceId, topic),
        },
        now,
      );
    });
    return { results: retiredEach(ctx, req, req.body.abandons, one) };
  });
}

/** A proof as abandon.ts takes it; an envelope not in canonical base64 proves nothing (it never opens). */
function proofOf(json: { envelope: string; topic: string; direction: 'up' | 'will' }) {
  const envelope = Buffer.from(json.envelope, 'base64');
  return {
    envelope: envelope.toString('base64') === json.envelope ? envelope : new Uint8Array(0),
    topic: json.topic,
    direction: json.direction,
  };
}
