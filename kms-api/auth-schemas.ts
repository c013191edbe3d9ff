// Wire contract of login and tokens: device challenge-response, client credentials, the token-signing public keys,
// and the revocation feed brokers poll.
import type { FromSchema } from 'json-schema-to-ts';
import { errorResponses, idSchema } from './common-schemas.js';

/**
 * docs/PROTOCOL.md §13: 32 bytes in standard base64 (RFC 4648 §4: '+' and '/', '=' padding), canonical: 44
 * characters, the last before '=' one whose two unused low bits are zero, so each value has exactly one spelling.
 */
const base64Bytes32 = { type: 'string', pattern: '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$' } as const;

export const challengeBody = {
  type: 'object',
  required: ['device_id'],
  additionalProperties: false,
  properties: { device_id: idSchema },
} as const;

export const challengeResponse = {
  type: 'object',
  required: ['challenge', 'expires_in'],
  additionalProperties: false,
  properties: { challenge: { type: 'string' }, expires_in: { type: 'integer' } },
} as const;
export type ChallengeJson = FromSchema<typeof challengeResponse>;

/** docs/PROTOCOL.md §13: the device's HMAC-SM3 proof over a fresh challenge. */
export const deviceGrant = {
  type: 'object',
  required: ['grant_type', 'device_id', 'challenge', 'mac'],
  additionalProperties: false,
  properties: {
    grant_type: { const: 'device_challenge' },
    device_id: idSchema,
    challenge: base64Bytes32,
    mac: base64Bytes32,
  },
} as const;
export type DeviceGrant = FromSchema<typeof deviceGrant>;

/** OAuth 2.0 client credentials grant (RFC 6749 §4.4), for apps and brokers. */
export const clientGrant = {
  type: 'object',
  required: ['grant_type', 'client_id', 'client_secret'],
  additionalProperties: false,
  properties: {
    grant_type: { const: 'client_credentials' },
    client_id: idSchema,
    client_secret: { type: 'string', minLength: 1, maxLength: 256 },
  },
} as const;
export type ClientGrant = FromSchema<typeof clientGrant>;

export const tokenBody = { oneOf: [deviceGrant, clientGrant] } as const;

export const tokenResponse = {
  type: 'object',
  required: ['access_token', 'token_type', 'expires_in'],
  additionalProperties: false,
  properties: {
    access_token: { type: 'string' },
    token_type: { const: 'Bearer' },
    expires_in: { type: 'integer' },
  },
} as const;
export type TokenResponse = FromSchema<typeof tokenResponse>;

export const tokenKeysResponse = {
  type: 'object',
  required: ['keys'],
  additionalProperties: false,
  properties: {
    keys: {
      type: 'array',
      items: {
        type: 'object',
        required: ['kid', 'alg', 'public_key'],
        additionalProperties: false,
        properties: { kid: { type: 'string' }, alg: { const: 'Ed25519' }, public_key: { type: 'string' } },
      },
    },
  },
} as const;
export type TokenKeysJson = FromSchema<typeof tokenKeysResponse>;

export const revocationsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    after: { type: 'integer', minimum: 0 },
    limit: { type: 'integer', minimum: 1, maximum: 10000 },
  },
} as const;

export const revocationsResponse = {
  type: 'object',
  required: ['cursor', 'revocations'],
  additionalProperties: false,
  properties: {
    cursor: { type: 'integer' },
    revocations: {
      type: 'array',
      items: {
        type: 'object',
        required: ['subject', 'role', 'revoked_at'],
        additionalProperties: false,
        properties: {
          subject: { type: 'string' },
          role: { type: 'string' },
          revoked_at: { type: 'integer' },
        },
      },
    },
  },
} as const;
export type RevocationsJson = FromSchema<typeof revocationsResponse>;

export const challengeRoute = {
  body: challengeBody,
  response: { 200: challengeResponse, ...errorResponses },
} as const;
export const tokenRoute = { body: tokenBody, response: { 200: tokenResponse, ...errorResponses } } as const;
export const tokenKeysRoute = { response: { 200: tokenKeysResponse, ...errorResponses } } as const;
export const revocationsRoute = {
  querystring: revocationsQuery,
  response: { 200: revocationsResponse, ...errorResponses },
} as const;
