// The revocation feed brokers poll to drop revoked devices, apps and brokers.
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';
import { errorResponses } from './schemas.js';

/** Broker group. */
export function revocationRoutes(app: RouteScope, ctx: KmsContext): void {
  app.get<{ Querystring: { after?: number; limit?: number } }>(
    '/api/v1/revocations',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            after: { type: 'integer', minimum: 0 },
            limit: { type: 'integer', minimum: 1, maximum: 10000 },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              cursor: { type: 'integer' },
              revocations: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    subject: { type: 'string' },
                    role: { type: 'string' },
                    revoked_at: { type: 'integer' },
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
      const after = req.query.after ?? 0;
      const rows = ctx.store.revocations(after, req.query.limit ?? 1000);
      return { cursor: rows.length ? rows[rows.length - 1]!.id : after, revocations: rows };
    },
  );
}
