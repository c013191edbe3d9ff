// ETSI GS QKD 014 key delivery for brokers: status, enc_keys (downlink), dec_keys (uplink), plus a retire extension.
import type { FastifyRequest } from 'fastify';
import type { RouteScope } from '../access.js';
import { brokerId } from '../callers.js';
import type { DeliveredKey } from '../claims.js';
import type { KmsContext } from '../context.js';
import { KmsError } from '../errors.js';
import { errorResponses, idSchema, uuidSchema } from './schemas.js';

const KEY_SIZE = 128;
/** Our extension carrying the claiming broker session (ETSI 014 §6.2 extension parameters). */
const SESSION_EXTENSION = 'qkey_session_id';

const params = { type: 'object', required: ['SAE_ID'], properties: { SAE_ID: idSchema } } as const;
const keyContainer = {
  type: 'object',
  required: ['keys'],
  properties: {
    keys: {
      type: 'array',
      items: {
        type: 'object',
        required: ['key_ID', 'key'],
        properties: {
          key_ID: { type: 'string' },
          key: { type: 'string' },
          key_ID_extension: { type: 'object', properties: { qkey_key_index: { type: 'integer' } } },
        },
      },
    },
  },
} as const;
const sessionId = { type: 'string', minLength: 1, maxLength: 128 } as const;

/** ETSI 014 key_IDs: a non-empty list of {key_ID, key_ID_extension?} objects. */
function keyIdList(limits: { uniqueItems?: boolean; maxItems?: number }) {
  return {
    type: 'array',
    minItems: 1,
    ...limits,
    items: {
      type: 'object',
      required: ['key_ID'],
      additionalProperties: false,
      properties: { key_ID: uuidSchema, key_ID_extension: { type: 'object' } },
    },
  } as const;
}

interface SaeParams {
  SAE_ID: string;
}

function container(keys: DeliveredKey[]) {
  const out = {
    keys: keys.map((k) => ({
      key_ID: k.key_ID,
      key: Buffer.from(k.key).toString('base64'),
      key_ID_extension: { qkey_key_index: k.key_index },
    })),
  };
  for (const k of keys) k.key.fill(0);
  return out;
}

/** ETSI 014 §6.2: mandatory extensions this KME does not support make the request fail. */
function sessionFromExtensions(
  mandatory: Array<Record<string, unknown>> | undefined,
  optional: Array<Record<string, unknown>> | undefined,
): string | null {
  let session: string | null = null;
  for (const ext of mandatory ?? []) {
    for (const [name, value] of Object.entries(ext)) {
      if (name !== SESSION_EXTENSION || typeof value !== 'string') {
        throw new KmsError('KMS_ERR_EXTENSION', undefined, {
          details: [{ extension_mandatory_unsupported: { [name]: value } }],
        });
      }
      session = value;
    }
  }
  for (const ext of optional ?? [])
    if (typeof ext[SESSION_EXTENSION] === 'string') session ??= ext[SESSION_EXTENSION] as string;
  return session;
}

/** Broker group. */
export function etsiRoutes(app: RouteScope, ctx: KmsContext): void {
  const prefix = '/api/v1/keys/:SAE_ID';

  app.get<{ Params: SaeParams }>(
    `${prefix}/status`,
    {
      schema: {
        params,
        response: {
          200: {
            type: 'object',
            properties: {
              source_KME_ID: { type: 'string' },
              target_KME_ID: { type: 'string' },
              master_SAE_ID: { type: 'string' },
              slave_SAE_ID: { type: 'string' },
              key_size: { type: 'integer' },
              stored_key_count: { type: 'integer' },
              max_key_count: { type: 'integer' },
              max_key_per_request: { type: 'integer' },
              max_key_size: { type: 'integer' },
              min_key_size: { type: 'integer' },
              max_SAE_ID_count: { type: 'integer' },
              status_extension: {
                type: 'object',
                properties: {
                  qkey_uplink_available: { type: 'integer' },
                  qkey_downlink_available: { type: 'integer' },
                  qkey_low: { type: 'boolean' },
                  qkey_next_uplink_key_index: { type: ['integer', 'null'] },
                },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (req) => {
      const device = ctx.store.requireDevice(req.params.SAE_ID);
      const pool = ctx.store.pool(device.device_id);
      return {
        source_KME_ID: ctx.config.kmeId,
        target_KME_ID: ctx.config.kmeId,
        master_SAE_ID: brokerId(req),
        slave_SAE_ID: device.device_id,
        key_size: KEY_SIZE,
        stored_key_count: pool.down,
        max_key_count: pool.down + pool.up,
        max_key_per_request: ctx.config.maxKeysPerRequest,
        max_key_size: KEY_SIZE,
        min_key_size: KEY_SIZE,
        max_SAE_ID_count: 0,
        status_extension: {
          qkey_uplink_available: pool.up,
          qkey_downlink_available: pool.down,
          qkey_low: pool.up < ctx.config.lowWater || pool.down < ctx.config.lowWater,
          qkey_next_uplink_key_index: ctx.store.nextUplinkIndex(device.device_id),
        },
      };
    },
  );

  const encBody = {
    type: 'object',
    additionalProperties: false,
    properties: {
      number: { type: 'integer', minimum: 1 },
      size: { type: 'integer', minimum: 1 },
      additional_slave_SAE_IDs: { type: 'array', items: { type: 'string' } },
      extension_mandatory: { type: 'array', items: { type: 'object' } },
      extension_optional: { type: 'array', items: { type: 'object' } },
    },
  } as const;

  interface EncInput {
    number?: number;
    size?: number;
    additional_slave_SAE_IDs?: string[];
    extension_mandatory?: Array<Record<string, unknown>>;
    extension_optional?: Array<Record<string, unknown>>;
  }

  const enc = async (req: FastifyRequest<{ Params: SaeParams }>, input: EncInput) => {
    const number = input.number ?? 1;
    if ((input.size ?? KEY_SIZE) !== KEY_SIZE)
      throw new KmsError('KMS_ERR_KEY_SIZE', undefined, { details: [{ size: input.size }] });
    if (number > ctx.config.maxKeysPerRequest)
      throw new KmsError('KMS_ERR_TOO_MANY_KEYS', `at most ${ctx.config.maxKeysPerRequest}`);
    if (input.additional_slave_SAE_IDs?.length)
      throw new KmsError('KMS_ERR_BAD_REQUEST', 'additional_slave_SAE_IDs is not supported (max_SAE_ID_count is 0)');
    const sessionId = sessionFromExtensions(input.extension_mandatory, input.extension_optional);
    const keys = await ctx.claims.submit({
      kind: 'enc',
      deviceId: req.params.SAE_ID,
      count: number,
      brokerId: brokerId(req),
      sessionId,
    });
    return container(keys);
  };

  app.post<{ Params: SaeParams; Body: EncInput }>(
    `${prefix}/enc_keys`,
    { schema: { params, body: encBody, response: { 200: keyContainer, ...errorResponses } } },
    (req) => enc(req, req.body ?? {}),
  );
  app.get<{ Params: SaeParams; Querystring: { number?: number; size?: number } }>(
    `${prefix}/enc_keys`,
    {
      schema: {
        params,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { number: { type: 'integer', minimum: 1 }, size: { type: 'integer', minimum: 1 } },
        },
        response: { 200: keyContainer, ...errorResponses },
      },
    },
    (req) => enc(req, req.query),
  );

  const decBody = {
    type: 'object',
    required: ['key_IDs'],
    additionalProperties: false,
    properties: {
      key_IDs: keyIdList({ uniqueItems: true }),
      key_IDs_extension: {
        type: 'object',
        additionalProperties: false,
        properties: { [SESSION_EXTENSION]: sessionId },
      },
    },
  } as const;

  const dec = async (req: FastifyRequest<{ Params: SaeParams }>, keyIds: string[], session: string | null) => {
    if (new Set(keyIds).size !== keyIds.length) throw new KmsError('KMS_ERR_BAD_REQUEST', 'duplicate key_ID');
    if (keyIds.length > ctx.config.maxKeysPerRequest)
      throw new KmsError('KMS_ERR_TOO_MANY_KEYS', `at most ${ctx.config.maxKeysPerRequest}`);
    const keys = await ctx.claims.submit({
      kind: 'dec',
      deviceId: req.params.SAE_ID,
      keyIds,
      brokerId: brokerId(req),
      sessionId: session,
    });
    return container(keys);
  };

  app.post<{
    Params: SaeParams;
    Body: { key_IDs: Array<{ key_ID: string }>; key_IDs_extension?: { qkey_session_id?: string } };
  }>(
    `${prefix}/dec_keys`,
    { schema: { params, body: decBody, response: { 200: keyContainer, ...errorResponses } } },
    (req) =>
      dec(
        req,
        req.body.key_IDs.map((k) => k.key_ID),
        req.body.key_IDs_extension?.qkey_session_id ?? null,
      ),
  );
  app.get<{ Params: SaeParams; Querystring: { key_ID: string } }>(
    `${prefix}/dec_keys`,
    {
      schema: {
        params,
        querystring: {
          type: 'object',
          required: ['key_ID'],
          additionalProperties: false,
          properties: { key_ID: uuidSchema },
        },
        response: { 200: keyContainer, ...errorResponses },
      },
    },
    (req) => dec(req, [req.query.key_ID], null),
  );

  // Extension (not in ETSI 014): the broker reports keys it stopped using (session over or rotation).
  app.post<{ Params: SaeParams; Body: { key_IDs: Array<{ key_ID: string }> } }>(
    `${prefix}/retire`,
    {
      schema: {
        params,
        body: {
          type: 'object',
          required: ['key_IDs'],
          additionalProperties: false,
          properties: { key_IDs: keyIdList({ maxItems: 1024 }) },
        },
        response: { 200: { type: 'object', properties: { retired: { type: 'integer' } } }, ...errorResponses },
      },
    },
    async (req) => {
      ctx.store.requireDevice(req.params.SAE_ID);
      return {
        retired: ctx.store.retireKeys(
          req.params.SAE_ID,
          req.body.key_IDs.map((k) => k.key_ID),
          brokerId(req),
        ),
      };
    },
  );
}
