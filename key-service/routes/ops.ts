// Operational routes: liveness with a database check, and Prometheus metrics.
import { healthRoute } from '../../kms-api/common-schemas.js';
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';

/** Public group. */
export function opsRoutes(app: RouteScope, ctx: KmsContext): void {
  const probe = ctx.store.db.prepare('SELECT 1');
  app.get('/healthz', { schema: healthRoute }, async () => {
    probe.get();
    return { status: 'ok' as const };
  });
  app.get('/metrics', async (_req, reply) => {
    reply.type(ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
}
