// Wire contract of the bulk extension routes (not in ETSI GS QKD 014): many devices' claims or retirements in one
// request, each item all or nothing on its own, answered item by item. docs/KMS-API.md "Bulk extension".
import type { FromSchema } from 'json-schema-to-ts';
import { errorResponses, errorSchema, idSchema, uuidSchema } from './common-schemas.js';
import { decKeysBody, encKeysBody, keyContainer, sessionIdSchema, uplinkProofSchema } from './etsi-schemas.js';

/**
 * Items per bulk request at most. bench/kms.ts ("bulk" rows): 64 one-key claims per request already carry most of
 * the gain over single requests; 256 bounds the time one request holds the key service's event loop.
 */
export const MAX_BULK_ITEMS = 256;

/**
 * Largest bulk request body. An uplink claim carries its proof (an envelope of up to 22 MB, etsi-schemas.ts), so a
 * claim whose proof does not fit, or fills a bulk request alone, goes through dec_keys instead (the broker's
 * coalescer does so); 1 MiB holds 256 claims proved by envelopes of about 3 KiB.
 */
export const BULK_BODY_LIMIT = 1024 * 1024;

/** One device's claim: exactly one of enc_keys or dec_keys, with the body its ETSI 014 route takes. */
export const bulkClaimItem = {
  type: 'object',
  required: ['SAE_ID'],
  additionalProperties: false,
  properties: {
    SAE_ID: idSchema,
    enc_keys: encKeysBody,
    dec_keys: decKeysBody,
  },
  oneOf: [{ required: ['enc_keys'] }, { required: ['dec_keys'] }],
} as const;
export type BulkClaimItem = FromSchema<typeof bulkClaimItem>;

export const bulkClaimsBody = {
  type: 'object',
  required: ['claims'],
  additionalProperties: false,
  properties: { claims: { type: 'array', minItems: 1, maxItems: MAX_BULK_ITEMS, items: bulkClaimItem } },
} as const;
export type BulkClaimsRequest = FromSchema<typeof bulkClaimsBody>;

/** An item's refusal: the error body its single route would have answered, with that answer's HTTP status. */
export const bulkItemError = {
  type: 'object',
  required: ['status', ...errorSchema.required],
  additionalProperties: false,
  properties: { status: { type: 'integer' }, ...errorSchema.properties },
} as const;
export type BulkItemError = FromSchema<typeof bulkItemError>;

/** An item's outcome: the key container its single route would have answered, or that route's error. */
const bulkClaimResult = {
  type: 'object',
  additionalProperties: false,
  properties: { keys: keyContainer.properties.keys, error: bulkItemError },
} as const;
export type BulkClaimResult = FromSchema<typeof bulkClaimResult>;

export const bulkClaimsResponse = {
  type: 'object',
  required: ['results'],
  additionalProperties: false,
  properties: { results: { type: 'array', items: bulkClaimResult } },
} as const;
export type BulkClaimsJson = FromSchema<typeof bulkClaimsResponse>;

/** One device's retirement, as its retire route takes it. */
export const bulkRetireItem = {
  type: 'object',
  required: ['SAE_ID', 'key_IDs'],
  additionalProperties: false,
  properties: {
    SAE_ID: idSchema,
    key_IDs: {
      type: 'array',
      minItems: 1,
      maxItems: 1024,
      items: {
        type: 'object',
        required: ['key_ID'],
        additionalProperties: false,
        properties: { key_ID: uuidSchema },
      },
    },
  },
} as const;
export type BulkRetireItem = FromSchema<typeof bulkRetireItem>;

export const bulkRetireBody = {
  type: 'object',
  required: ['retirements'],
  additionalProperties: false,
  properties: { retirements: { type: 'array', minItems: 1, maxItems: MAX_BULK_ITEMS, items: bulkRetireItem } },
} as const;
export type BulkRetireRequest = FromSchema<typeof bulkRetireBody>;

const bulkRetireResult = {
  type: 'object',
  additionalProperties: false,
  properties: { retired: { type: 'integer' }, error: bulkItemError },
} as const;
export type BulkRetireResult = FromSchema<typeof bulkRetireResult>;

export const bulkRetireResponse = {
  type: 'object',
  required: ['results'],
  additionalProperties: false,
  properties: { results: { type: 'array', items: bulkRetireResult } },
} as const;
export type BulkRetireJson = FromSchema<typeof bulkRetireResponse>;

/**
 * Keys a broker asked for and cannot have received: the answer to its claim was lost (a timeout, a connection
 * closed after the request was sent), so the claim may have committed or may still commit. Each listed key is
 * retired if this broker holds its claim, or retired unclaimed if it is still a filled uplink key and `qkey_proof`
 * opens under it (the same proof of use its claim carried): a late claim then finds it retired and delivers nothing.
 * `downlink_session_id` retires every downlink key this broker claimed for that session, ended (an enc_keys claim
 * names no key: a session one of whose claims was lost sends this when it ends).
 */
export const bulkAbandonItem = {
  type: 'object',
  required: ['SAE_ID'],
  additionalProperties: false,
  properties: {
    SAE_ID: idSchema,
    key_IDs: {
      type: 'array',
      minItems: 1,
      maxItems: 64,
      items: {
        type: 'object',
        required: ['key_ID'],
        additionalProperties: false,
        properties: { key_ID: uuidSchema, qkey_proof: uplinkProofSchema },
      },
    },
    downlink_session_id: sessionIdSchema,
  },
  anyOf: [{ required: ['key_IDs'] }, { required: ['downlink_session_id'] }],
} as const;
export type BulkAbandonItem = FromSchema<typeof bulkAbandonItem>;

export const bulkAbandonBody = {
  type: 'object',
  required: ['abandons'],
  additionalProperties: false,
  properties: { abandons: { type: 'array', minItems: 1, maxItems: MAX_BULK_ITEMS, items: bulkAbandonItem } },
} as const;

export const bulkAbandonRoute = {
  body: bulkAbandonBody,
  response: { 200: bulkRetireResponse, ...errorResponses },
} as const;

export const bulkClaimsRoute = {
  body: bulkClaimsBody,
  response: { 200: bulkClaimsResponse, ...errorResponses },
} as const;
export const bulkRetireRoute = {
  body: bulkRetireBody,
  response: { 200: bulkRetireResponse, ...errorResponses },
} as const;
