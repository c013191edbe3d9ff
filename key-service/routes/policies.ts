// The policy table's routes: admin group (list, show, set, delete) and broker group (the versioned feed).
import * as wire from '../../kms-api/policy-schemas.js';
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';

const ADMIN = 'admin';

/** Admin group. */
export function adminPolicyRoutes(app: RouteScope, ctx: KmsContext): void {
  const { policies } = ctx;
  app.get('/api/v1/admin/policies', { schema: wire.listPoliciesRoute }, async () => policies.table());
  app.get('/api/v1/admin/policies/:policy_id', { schema: wire.policyRoute }, async (req) =>
    policies.get(req.params.policy_id),
  );
  app.put('/api/v1/admin/policies/:policy_id', { schema: wire.setPolicyRoute }, async (req, reply) => {
    const { entry, created } = policies.set(req.params.policy_id, req.body, ADMIN);
    reply.code(created ? 201 : 200);
    return entry;
  });
  app.delete('/api/v1/admin/policies/:policy_id', { schema: wire.deletePolicyRoute }, async (req) => ({
    policy_id: req.params.policy_id,
    deleted: true as const,
    version: policies.delete(req.params.policy_id, ADMIN),
  }));
}

/** Broker group: the table when its version is not the one the broker knows. */
export function brokerPolicyRoutes(app: RouteScope, ctx: KmsContext): void {
  app.get('/api/v1/policies', { schema: wire.policyFeedRoute }, async (req) => {
    const version = ctx.policies.version();
    if (req.query.known === version) return { version };
    return ctx.policies.table();
  });
}
