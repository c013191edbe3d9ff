// The revocation feed brokers poll to drop revoked devices, apps and brokers.
import { revocationsRoute } from '../../kms-api/auth-schemas.js';
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';

/** Broker group. */
export function revocationRoutes(app: RouteScope, ctx: KmsContext): void {
  app.get('/api/v1/revocations', { schema: revocationsRoute }, async (req) => {
    const after = req.query.after ?? 0;
    const rows = ctx.store.revocations(after, req.query.limit ?? 1000);
    return { cursor: rows.length ? rows[rows.length - 1]!.id : after, revocations: rows };
  });
}
