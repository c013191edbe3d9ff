// The console's policy pages (console group): list, show, set and delete entries of the policy table, through the
// same policy store as the admin API (checked, versioned and audited there), forms held to the API's own schema.
import { Ajv } from 'ajv';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { idSchema } from '../../kms-api/common-schemas.js';
import { policyBody, type PolicyBodyJson } from '../../kms-api/policy-schemas.js';
import { parseSuite } from '../../protocol/index.js';
import type { RouteScope } from '../access.js';
import type { KmsContext } from '../context.js';
import type { Html } from './html.js';
import type { PageFrame } from './pages.js';
import { confirmDeletePolicyPage, policiesPage, policyPage } from './policy-pages.js';

/** What the console's page routes share with these (routes.ts). */
export interface ConsoleKit {
  frame(req: FastifyRequest, title: string, section: PageFrame['section']): PageFrame & { csrf: string };
  show(reply: FastifyReply, page: Html, status?: number): FastifyReply;
  requireValid<T>(check: ((body: unknown) => boolean) & { errors?: unknown }, body: T): T;
  actor: string;
}

const BASE = '/console/policies';
const text = (max: number) => ({ type: 'string', maxLength: max }) as const;
const csrf = { type: 'string', minLength: 1, maxLength: 128 } as const;
const idParams = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: idSchema },
} as const;

/**
 * The form's fields are loosely bounded text here; what they must be is the admin API's own schema (policyBody),
 * checked once the form is turned into that body, and then the store's own checks (filter, contradictions).
 */
const setForm = {
  type: 'object',
  required: ['csrf', 'id', 'role', 'filter', 'encryption'],
  additionalProperties: false,
  properties: {
    csrf,
    id: idSchema,
    role: text(16),
    principal: text(256),
    filter: text(4096),
    encryption: text(16),
    suites: text(64),
    max_payload: text(16),
    max_qos: text(1),
    retain: text(3),
    rotate_messages: text(20),
    rotate_bytes: text(20),
    rotate_seconds: text(20),
  },
} as const;

type SetForm = { [K in keyof (typeof setForm)['properties']]?: string };

const validPolicyBody = new Ajv({ allErrors: false }).compile(policyBody);

/** A whole number typed in a field; anything else is passed on as typed, for the schema to refuse. */
const numberOr = (v: string) => (/^\d{1,16}$/.test(v) ? Number(v) : v);

/** The admin API's body from the form: empty fields are absent (the broker's own configuration then applies). */
export function policyBodyOf(f: SetForm): unknown {
  const given = (v: string | undefined) => (v === undefined || v.trim() === '' ? undefined : v.trim());
  const suites = given(f.suites)
    ?.split(',')
    .map((s) => s.trim())
    .map((s) => {
      if (/^\d+$/.test(s)) return Number(s);
      try {
        return parseSuite(s);
      } catch {
        return s;
      }
    });
  const rotation = Object.fromEntries(
    (
      [
        ['messages', given(f.rotate_messages)],
        ['bytes', given(f.rotate_bytes)],
        ['seconds', given(f.rotate_seconds)],
      ] as const
    )
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => [k, numberOr(v!)]),
  );
  const retain = given(f.retain);
  return {
    role: f.role,
    ...(given(f.principal) !== undefined ? { principal: given(f.principal) } : {}),
    filter: f.filter,
    encryption: f.encryption,
    ...(suites ? { suites } : {}),
    ...(Object.keys(rotation).length ? { rotation } : {}),
    ...(given(f.max_payload) !== undefined ? { max_payload: numberOr(given(f.max_payload)!) } : {}),
    ...(given(f.max_qos) !== undefined ? { max_qos: numberOr(given(f.max_qos)!) } : {}),
    ...(retain !== undefined ? { retain: retain === 'yes' ? true : retain === 'no' ? false : retain } : {}),
  };
}

export function consolePolicyRoutes(app: RouteScope, ctx: KmsContext, kit: ConsoleKit): void {
  const { policies } = ctx;
  const at = (id: string) => `${BASE}/${encodeURIComponent(id)}`;

  app.get('/policies', async (req, reply) =>
    kit.show(reply, policiesPage(kit.frame(req, 'Policies', BASE), policies.table())),
  );

  app.get('/policies/:id', { schema: { params: idParams } }, async (req, reply) => {
    const e = policies.get(req.params.id); // KMS_ERR_NOT_FOUND when there is none
    return kit.show(reply, policyPage(kit.frame(req, `Policy ${e.policy_id}`, BASE), e));
  });

  app.get('/policies/:id/delete', { schema: { params: idParams } }, async (req, reply) => {
    const e = policies.get(req.params.id);
    return kit.show(reply, confirmDeletePolicyPage(kit.frame(req, `Delete policy ${e.policy_id}?`, BASE), e));
  });

  app.post('/policies', { schema: { body: setForm } }, async (req, reply) => {
    const body = kit.requireValid(validPolicyBody, policyBodyOf(req.body)) as PolicyBodyJson;
    policies.set(req.body.id, body, kit.actor); // checked, versioned and audited as the admin API's set
    // Post/redirect/get: the entry's page shows it; reloading that page sets nothing again.
    return reply.code(303).header('location', at(req.body.id)).send();
  });

  app.post(
    '/policies/:id/delete',
    {
      schema: {
        params: idParams,
        body: { type: 'object', required: ['csrf'], additionalProperties: false, properties: { csrf } },
      },
    },
    async (req, reply) => {
      policies.delete(req.params.id, kit.actor);
      return reply.code(303).header('location', BASE).send();
    },
  );
}
