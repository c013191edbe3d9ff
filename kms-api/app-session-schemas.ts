// Wire contract of application sessions (docs/PROTOCOL.md §22, docs/KMS-API.md): SM2 public key registration, the
// app key pool, the app's challenge and session key, and the broker's claim of that key.
import type { FromSchema } from 'json-schema-to-ts';
import { base64Key128, batchIdSchema, errorResponses, idSchema, uuidSchema } from './common-schemas.js';
import { clientParams } from './admin-schemas.js';

/**
 * An uncompressed SM2 point, 04 || x || y, 130 hex digits (either case; stored lowercase). The pattern bounds the
 * length; whether the point lies on the curve is checked by the service (KMS_ERR_PUBLIC_KEY_INVALID).
 */
export const sm2PublicKeySchema = { type: 'string', pattern: '^04[0-9a-fA-F]{128}$' } as const;
/** Canonical base64 (RFC 4648 §4) of 32 bytes (the challenge) and of 64 bytes (an SM2 signature r || s). */
const base64Bytes32 = { type: 'string', pattern: '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$' } as const;
const base64Bytes64 = { type: 'string', pattern: '^[A-Za-z0-9+/]{85}[AQgw]==$' } as const;
/** Largest number of keys one pool fill adds. */
export const APP_KEY_FILL_MAX = 1000;

export const sm2KeyBody = {
  type: 'object',
  required: ['sm2_public_key'],
  additionalProperties: false,
  properties: { sm2_public_key: sm2PublicKeySchema },
} as const;
export const sm2KeyResponse = {
  type: 'object',
  required: ['app_id', 'sm2_public_key'],
  additionalProperties: false,
  properties: { app_id: { type: 'string' }, sm2_public_key: { type: 'string' } },
} as const;

export const appKeyFillBody = {
  type: 'object',
  required: ['batch_id', 'keys'],
  additionalProperties: false,
  properties: {
    batch_id: batchIdSchema,
    keys: { type: 'array', minItems: 1, maxItems: APP_KEY_FILL_MAX, items: base64Key128 },
  },
} as const;
export const appKeyFillResponse = {
  type: 'object',
  required: ['batch_id', 'count'],
  additionalProperties: false,
  properties: { batch_id: { type: 'string' }, count: { type: 'integer' } },
} as const;
export const appKeyLevels = {
  type: 'object',
  required: ['filled', 'issued', 'claimed', 'expired'],
  additionalProperties: false,
  properties: {
    filled: { type: 'integer' },
    issued: { type: 'integer' },
    claimed: { type: 'integer' },
    expired: { type: 'integer' },
  },
} as const;

export const sessionChallengeBody = {
  type: 'object',
  required: ['broker_id'],
  additionalProperties: false,
  properties: { broker_id: idSchema },
} as const;
/** Everything the app signs besides the challenge itself (§22.2), so that it signs exactly what the service checks. */
export const sessionChallengeResponse = {
  type: 'object',
  required: ['app_id', 'kme_id', 'broker_id', 'challenge', 'expires_at'],
  additionalProperties: false,
  properties: {
    app_id: { type: 'string' },
    kme_id: { type: 'string' },
    broker_id: { type: 'string' },
    challenge: { type: 'string' },
    expires_at: { type: 'integer' },
  },
} as const;
export type SessionChallengeJson = FromSchema<typeof sessionChallengeResponse>;

export const sessionKeyBody = {
  type: 'object',
  required: ['broker_id', 'challenge', 'signature'],
  additionalProperties: false,
  properties: { broker_id: idSchema, challenge: base64Bytes32, signature: base64Bytes64 },
} as const;
/** `wrapped_key`: the SM4 session key under the app's SM2 key (GB/T 32918.4, C1 || C3 || C2), base64. */
export const sessionKeyResponse = {
  type: 'object',
  required: ['key_ID', 'wrapped_key', 'broker_id'],
  additionalProperties: false,
  properties: { key_ID: { type: 'string' }, wrapped_key: { type: 'string' }, broker_id: { type: 'string' } },
} as const;
export type SessionKeyJson = FromSchema<typeof sessionKeyResponse>;

export const appDecKeysParams = {
  type: 'object',
  required: ['SAE_ID'],
  additionalProperties: false,
  properties: { SAE_ID: idSchema },
} as const;
/** ETSI GS QKD 014 §6.4 Key IDs, restricted to what an app session key id is. */
export const appDecKeysBody = {
  type: 'object',
  required: ['key_IDs'],
  additionalProperties: false,
  properties: {
    key_IDs: {
      type: 'array',
      minItems: 1,
      maxItems: 16,
      items: {
        type: 'object',
        required: ['key_ID'],
        additionalProperties: false,
        properties: { key_ID: uuidSchema },
      },
    },
  },
} as const;
/** ETSI GS QKD 014 §6.3 Key container. */
export const appKeyContainer = {
  type: 'object',
  required: ['keys'],
  additionalProperties: false,
  properties: {
    keys: {
      type: 'array',
      items: {
        type: 'object',
        required: ['key_ID', 'key'],
        additionalProperties: false,
        properties: { key_ID: { type: 'string' }, key: { type: 'string' } },
      },
    },
  },
} as const;
export type AppKeyContainerJson = FromSchema<typeof appKeyContainer>;
export type AppKeyLevelsJson = FromSchema<typeof appKeyLevels>;

export const setSm2KeyRoute = {
  params: clientParams,
  body: sm2KeyBody,
  response: { 200: sm2KeyResponse, ...errorResponses },
} as const;
export const appKeyFillRoute = {
  body: appKeyFillBody,
  response: { 201: appKeyFillResponse, ...errorResponses },
} as const;
export const appKeyLevelsRoute = { response: { 200: appKeyLevels, ...errorResponses } } as const;
export const sessionChallengeRoute = {
  body: sessionChallengeBody,
  response: { 200: sessionChallengeResponse, ...errorResponses },
} as const;
export const sessionKeyRoute = {
  body: sessionKeyBody,
  response: { 200: sessionKeyResponse, ...errorResponses },
} as const;
export const appDecKeysRoute = {
  params: appDecKeysParams,
  body: appDecKeysBody,
  response: { 200: appKeyContainer, ...errorResponses },
} as const;
