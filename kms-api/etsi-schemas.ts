// Wire contract of the broker routes: ETSI GS QKD 014 key delivery (status, enc_keys, dec_keys) and the retire
// extension. Response schemas list every field that may leave the service.
import type { FromSchema } from 'json-schema-to-ts';
import { ENVELOPE_OVERHEAD, MAX_PAYLOAD_LIMIT } from '../protocol/envelope.js';
import { errorResponses, idSchema, uuidSchema } from './common-schemas.js';

/** Our extension carrying the claiming broker session (ETSI 014 §6.2 extension parameters). */
export const SESSION_EXTENSION = 'qkey_session_id';
/** A broker session id, as recorded with each key it claims and in the audit log (also inside extension objects). */
export const sessionIdSchema = { type: 'string', minLength: 1, maxLength: 128 } as const;

export const saeParams = {
  type: 'object',
  required: ['SAE_ID'],
  additionalProperties: false,
  properties: { SAE_ID: idSchema },
} as const;

/** ETSI 014 §6.3 Key container. */
export const keyContainer = {
  type: 'object',
  required: ['keys'],
  additionalProperties: false,
  properties: {
    keys: {
      type: 'array',
      items: {
        type: 'object',
        required: ['key_ID', 'key', 'key_ID_extension'],
        additionalProperties: false,
        properties: {
          key_ID: { type: 'string' },
          key: { type: 'string' },
          key_ID_extension: {
            type: 'object',
            required: ['qkey_key_index'],
            additionalProperties: false,
            properties: { qkey_key_index: { type: 'integer' } },
          },
        },
      },
    },
  },
} as const;
export type KeyContainer = FromSchema<typeof keyContainer>;
export type DeliveredKeyJson = KeyContainer['keys'][number];

/** ETSI 014 §6.1 Status, with this key service's extension fields. */
export const keyStatus = {
  type: 'object',
  required: [
    'source_KME_ID',
    'target_KME_ID',
    'master_SAE_ID',
    'slave_SAE_ID',
    'key_size',
    'stored_key_count',
    'max_key_count',
    'max_key_per_request',
    'max_key_size',
    'min_key_size',
    'max_SAE_ID_count',
    'status_extension',
  ],
  additionalProperties: false,
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
      required: ['qkey_uplink_available', 'qkey_downlink_available', 'qkey_low', 'qkey_next_uplink_key_index'],
      additionalProperties: false,
      properties: {
        qkey_uplink_available: { type: 'integer' },
        qkey_downlink_available: { type: 'integer' },
        qkey_low: { type: 'boolean' },
        qkey_next_uplink_key_index: { type: ['integer', 'null'] },
      },
    },
  },
} as const;
export type KeyStatusJson = FromSchema<typeof keyStatus>;

/** ETSI 014 §6.2 Key request (POST enc_keys). */
export const encKeysBody = {
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
export type EncKeysRequest = FromSchema<typeof encKeysBody>;

export const encKeysQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { number: { type: 'integer', minimum: 1 }, size: { type: 'integer', minimum: 1 } },
} as const;

/** ETSI 014 key_IDs: a non-empty list of {key_ID, key_ID_extension?} objects. */
function keyIdList<const Limits extends { uniqueItems?: boolean; maxItems?: number }>(limits: Limits) {
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

/** Our extension carrying, per uplink key, the envelope that names it (docs/KMS-API.md "Proof of use"). */
export const PROOF_EXTENSION = 'qkey_proof';

/**
 * Base64 length of the largest envelope a proof may carry: the protocol's largest payload (docs/PROTOCOL.md §6) plus
 * header and tag, so that any envelope a broker may accept can prove its key's use.
 */
export const PROOF_ENVELOPE_MAX_BASE64 = Math.ceil((MAX_PAYLOAD_LIMIT + ENVELOPE_OVERHEAD) / 3) * 4;

/** Largest dec_keys body: one proof of the largest envelope, and room for the rest of the request. */
export const DEC_KEYS_BODY_LIMIT = PROOF_ENVELOPE_MAX_BASE64 + 64 * 1024;

/**
 * Proof of use: an envelope sealed under the uplink key being claimed, as the device sent it, with the topic and
 * direction it was sent with. The key service opens it under the key before the key is claimed: a key no device
 * has used cannot be claimed, so forged envelopes naming unused key indices cannot spend a device's keys.
 */
export const uplinkProofSchema = {
  type: 'object',
  required: ['envelope', 'topic', 'direction'],
  additionalProperties: false,
  properties: {
    envelope: { type: 'string', minLength: 1, maxLength: PROOF_ENVELOPE_MAX_BASE64 },
    topic: { type: 'string', minLength: 1, maxLength: 65535 },
    direction: { enum: ['up', 'will'] },
  },
} as const;
export type UplinkProofJson = FromSchema<typeof uplinkProofSchema>;

/** ETSI 014 §6.4 Key IDs (POST dec_keys); each key_ID may carry its proof of use in key_ID_extension. */
export const decKeysBody = {
  type: 'object',
  required: ['key_IDs'],
  additionalProperties: false,
  properties: {
    key_IDs: {
      type: 'array',
      minItems: 1,
      uniqueItems: true,
      items: {
        type: 'object',
        required: ['key_ID'],
        additionalProperties: false,
        properties: {
          key_ID: uuidSchema,
          key_ID_extension: {
            type: 'object',
            additionalProperties: false,
            properties: { [PROOF_EXTENSION]: uplinkProofSchema },
          },
        },
      },
    },
    key_IDs_extension: {
      type: 'object',
      additionalProperties: false,
      properties: { [SESSION_EXTENSION]: sessionIdSchema },
    },
  },
} as const;
export type DecKeysRequest = FromSchema<typeof decKeysBody>;

export const decKeysQuery = {
  type: 'object',
  required: ['key_ID'],
  additionalProperties: false,
  properties: { key_ID: uuidSchema },
} as const;

export const retireBody = {
  type: 'object',
  required: ['key_IDs'],
  additionalProperties: false,
  properties: { key_IDs: keyIdList({ maxItems: 1024 }) },
} as const;
export type RetireRequest = FromSchema<typeof retireBody>;

export const retireResponse = {
  type: 'object',
  required: ['retired'],
  additionalProperties: false,
  properties: { retired: { type: 'integer' } },
} as const;

const keys = { 200: keyContainer, ...errorResponses } as const;
export const statusRoute = { params: saeParams, response: { 200: keyStatus, ...errorResponses } } as const;
export const encKeysPostRoute = { params: saeParams, body: encKeysBody, response: keys } as const;
export const encKeysGetRoute = { params: saeParams, querystring: encKeysQuery, response: keys } as const;
export const decKeysPostRoute = { params: saeParams, body: decKeysBody, response: keys } as const;
export const decKeysGetRoute = { params: saeParams, querystring: decKeysQuery, response: keys } as const;
export const retireRoute = {
  params: saeParams,
  body: retireBody,
  response: { 200: retireResponse, ...errorResponses },
} as const;
