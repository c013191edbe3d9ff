// JSON schemas every key-service route shares: ids, keys, the error body. Pure data; the server validates and
// serializes with them, clients take their types from them (json-schema-to-ts), so both ends read one contract.
import type { FromSchema } from 'json-schema-to-ts';
import { DEVICE_ID_PATTERN } from '../protocol/device-id.js';

/** Device, app, broker and batch ids: the one id rule of docs/PROTOCOL.md §14 (protocol/device-id.ts). */
export const ID_PATTERN = DEVICE_ID_PATTERN;
export const idSchema = { type: 'string', pattern: ID_PATTERN } as const;
/**
 * Fill batch ids (docs/PROTOCOL.md §21.2): the id alphabet, up to 256 characters, unique across all devices. Longer
 * than an id, so that a batch id made of the longest device id, a fill id and a key index still fits.
 */
export const BATCH_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$';
export const batchIdSchema = { type: 'string', pattern: BATCH_ID_PATTERN } as const;
export const uuidSchema = {
  type: 'string',
  pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$',
} as const;
export const base64Key128 = { type: 'string', pattern: '^[A-Za-z0-9+/]{22}==$' } as const;

/** ETSI GS QKD 014 error body, plus our stable code. */
export const errorSchema = {
  type: 'object',
  required: ['message', 'code'],
  additionalProperties: false,
  properties: {
    message: { type: 'string' },
    code: { type: 'string' },
    details: { type: 'array', items: { type: 'object', additionalProperties: true } },
  },
} as const;
export type ErrorBody = FromSchema<typeof errorSchema>;

export const errorResponses = {
  '4xx': errorSchema,
  '5xx': errorSchema,
} as const;

export const healthResponse = {
  type: 'object',
  required: ['status'],
  additionalProperties: false,
  properties: { status: { const: 'ok' } },
} as const;

export const healthRoute = { response: { 200: healthResponse, ...errorResponses } } as const;
