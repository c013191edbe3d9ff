// Wire contract of the admin API: devices, fill batches, apps, brokers, pool levels and the audit log. Response
// schemas list every field that may leave the service; anything else a handler returns is not serialized.
import type { FromSchema } from 'json-schema-to-ts';
import { base64Key128, batchIdSchema, errorResponses, idSchema } from './common-schemas.js';

export const MAX_KEYS_PER_BATCH = 4096;

/** SHA-256 fingerprint of a certificate's DER, as `openssl x509 -fingerprint -sha256` prints it. */
export const CERT_FINGERPRINT_PATTERN = '^([0-9A-F]{2}:){31}[0-9A-F]{2}$';
/** A distinguished name in RFC 4514 form (`openssl x509 -subject -nameopt RFC2253`), e.g. `CN=broker-1,O=Example`. */
export const CERT_SUBJECT_PATTERN = '^[A-Za-z][A-Za-z0-9.-]*=[^\\u0000-\\u001f\\u007f]*$';

const nullableString = { type: ['string', 'null'] } as const;
const nullableInteger = { type: ['integer', 'null'] } as const;
const topicFilter = { type: 'string', minLength: 1, maxLength: 1024, pattern: '^[^\\u0000]*$' } as const;

export const deviceParams = {
  type: 'object',
  required: ['device_id'],
  additionalProperties: false,
  properties: { device_id: idSchema },
} as const;
export const batchParams = {
  type: 'object',
  required: ['device_id', 'batch_id'],
  additionalProperties: false,
  properties: { device_id: idSchema, batch_id: batchIdSchema },
} as const;
export const clientParams = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: idSchema },
} as const;

export const deviceView = {
  type: 'object',
  required: [
    'device_id',
    'serial',
    'state',
    'created_at',
    'revoked_at',
    'revoke_reason',
    'has_login_key',
    'pool',
    'next_key_index',
    'low',
    'suites',
    'pending_batches',
  ],
  additionalProperties: false,
  properties: {
    device_id: { type: 'string' },
    serial: nullableString,
    state: { enum: ['active', 'revoked'] },
    created_at: { type: 'integer' },
    revoked_at: nullableInteger,
    revoke_reason: nullableString,
    has_login_key: { type: 'boolean' },
    pool: {
      type: 'object',
      required: ['up', 'down'],
      additionalProperties: false,
      properties: { up: { type: 'integer' }, down: { type: 'integer' } },
    },
    next_key_index: { type: 'integer' },
    low: { type: 'boolean' },
    /** Envelope suites the chip supports, as recorded by its last fill that named them (null: not recorded). */
    suites: { type: ['array', 'null'], items: { type: 'integer' } },
    /** Batches registered and neither committed nor cancelled: a fill that stopped half-way. */
    pending_batches: {
      type: 'array',
      items: {
        type: 'object',
        required: ['batch_id', 'created_at', 'stale'],
        additionalProperties: false,
        properties: { batch_id: { type: 'string' }, created_at: { type: 'integer' }, stale: { type: 'boolean' } },
      },
    },
  },
} as const;
export type DeviceJson = FromSchema<typeof deviceView>;

/** The envelope suites a chip can declare at a fill (docs/PROTOCOL.md §20). */
export const suitesSchema = {
  type: 'array',
  minItems: 1,
  maxItems: 2,
  uniqueItems: true,
  items: { enum: [1, 2] },
} as const;

export const registerDeviceBody = {
  type: 'object',
  required: ['device_id'],
  additionalProperties: false,
  properties: { device_id: idSchema, serial: { type: 'string', minLength: 1, maxLength: 128 } },
} as const;

export const devicesQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    after: { type: 'string', maxLength: 128 },
    limit: { type: 'integer', minimum: 1, maximum: 1000 },
  },
} as const;

export const deviceList = {
  type: 'object',
  required: ['devices'],
  additionalProperties: false,
  properties: { devices: { type: 'array', items: deviceView }, next: { type: 'string' } },
} as const;
export type DeviceListJson = FromSchema<typeof deviceList>;

export const revokeDeviceBody = {
  type: ['object', 'null'],
  additionalProperties: false,
  properties: { reason: { type: 'string', maxLength: 256 } },
} as const;

export const deviceRevoked = {
  type: 'object',
  required: ['device_id', 'state', 'destroyed_keys'],
  additionalProperties: false,
  properties: {
    device_id: { type: 'string' },
    state: { const: 'revoked' },
    destroyed_keys: { type: 'integer' },
  },
} as const;
export type DeviceRevokedJson = FromSchema<typeof deviceRevoked>;

/** Every key's bookkeeping, never its bytes. */
export const deviceKeys = {
  type: 'object',
  required: ['keys'],
  additionalProperties: false,
  properties: {
    keys: {
      type: 'array',
      items: {
        type: 'object',
        required: [
          'key_ID',
          'key_index',
          'direction',
          'state',
          'batch_id',
          'claimed_by',
          'claimed_session',
          'claimed_at',
          'retired_at',
          'destroyed_at',
        ],
        additionalProperties: false,
        properties: {
          key_ID: { type: 'string' },
          key_index: { type: 'integer' },
          direction: { enum: ['up', 'down'] },
          state: { enum: ['pending', 'filled', 'claimed', 'retired', 'destroyed'] },
          batch_id: { type: 'string' },
          claimed_by: nullableString,
          claimed_session: nullableString,
          claimed_at: nullableInteger,
          retired_at: nullableInteger,
          destroyed_at: nullableInteger,
        },
      },
    },
  },
} as const;
export type DeviceKeysJson = FromSchema<typeof deviceKeys>;
export type KeyStateJson = DeviceKeysJson['keys'][number];

export const batchBody = {
  type: 'object',
  required: ['batch_id', 'keys'],
  additionalProperties: false,
  properties: {
    batch_id: batchIdSchema,
    login_key: base64Key128,
    suites: suitesSchema,
    keys: {
      type: 'array',
      maxItems: MAX_KEYS_PER_BATCH,
      items: {
        type: 'object',
        required: ['key_index', 'direction', 'key'],
        additionalProperties: false,
        properties: {
          key_index: { type: 'integer', minimum: 0, maximum: 0xffffffff },
          direction: { enum: ['up', 'down'] },
          key: base64Key128,
        },
      },
    },
  },
} as const;
export type BatchRequest = FromSchema<typeof batchBody>;

export const batchView = {
  type: 'object',
  required: [
    'batch_id',
    'device_id',
    'state',
    'up_count',
    'down_count',
    'has_login_key',
    'created_at',
    'settled_at',
    'suites',
  ],
  additionalProperties: false,
  properties: {
    batch_id: { type: 'string' },
    device_id: { type: 'string' },
    state: { enum: ['pending', 'committed', 'cancelled'] },
    up_count: { type: 'integer' },
    down_count: { type: 'integer' },
    has_login_key: { type: 'boolean' },
    created_at: { type: 'integer' },
    settled_at: nullableInteger,
    suites: { type: ['array', 'null'], items: { type: 'integer' } },
  },
} as const;
export type BatchJson = FromSchema<typeof batchView>;

export const batchesQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { state: { enum: ['pending', 'committed', 'cancelled'] } },
} as const;
export const batchList = {
  type: 'object',
  required: ['batches'],
  additionalProperties: false,
  properties: { batches: { type: 'array', items: batchView } },
} as const;
export type BatchListJson = FromSchema<typeof batchList>;

export const appAcl = {
  type: 'object',
  required: ['publish', 'subscribe'],
  additionalProperties: false,
  properties: {
    publish: { type: 'array', items: { type: 'string' } },
    subscribe: { type: 'array', items: { type: 'string' } },
  },
} as const;

export const registerAppBody = {
  type: 'object',
  required: ['app_id'],
  additionalProperties: false,
  properties: {
    app_id: idSchema,
    /** docs/PROTOCOL.md §17: an SM2 public key (04 || x || y, hex) opts the app in to session keys. */
    sm2_public_key: { type: 'string', pattern: '^04[0-9a-fA-F]{128}$' },
    publish: { type: 'array', maxItems: 64, items: topicFilter },
    subscribe: { type: 'array', maxItems: 64, items: topicFilter },
  },
} as const;
export type RegisterAppRequest = FromSchema<typeof registerAppBody>;

/** A broker (SAE) may also be identified by its TLS client certificate, by fingerprint or by subject. */
export const registerBrokerBody = {
  type: 'object',
  required: ['broker_id'],
  additionalProperties: false,
  properties: {
    broker_id: idSchema,
    cert_fingerprint: { type: 'string', pattern: CERT_FINGERPRINT_PATTERN },
    cert_subject: { type: 'string', minLength: 3, maxLength: 1024, pattern: CERT_SUBJECT_PATTERN },
  },
} as const;
export type RegisterBrokerRequest = FromSchema<typeof registerBrokerBody>;

/** The one response that carries a client secret; the service keeps only its salted scrypt hash. */
export const appRegistered = {
  type: 'object',
  required: ['app_id', 'client_secret'],
  additionalProperties: false,
  properties: { app_id: { type: 'string' }, client_secret: { type: 'string' } },
} as const;
export const brokerRegistered = {
  type: 'object',
  required: ['broker_id', 'client_secret'],
  additionalProperties: false,
  properties: { broker_id: { type: 'string' }, client_secret: { type: 'string' } },
} as const;

export const clientView = {
  type: 'object',
  required: ['client_id', 'role', 'state', 'created_at', 'revoked_at'],
  additionalProperties: false,
  properties: {
    client_id: { type: 'string' },
    role: { enum: ['app', 'broker'] },
    state: { enum: ['active', 'revoked'] },
    created_at: { type: 'integer' },
    revoked_at: nullableInteger,
    acl: appAcl,
    cert_fingerprint: nullableString,
    cert_subject: nullableString,
    sm2_public_key: nullableString,
  },
} as const;
export type ClientJson = FromSchema<typeof clientView>;

export const appList = {
  type: 'object',
  required: ['apps'],
  additionalProperties: false,
  properties: { apps: { type: 'array', items: clientView } },
} as const;
export const brokerList = {
  type: 'object',
  required: ['brokers'],
  additionalProperties: false,
  properties: { brokers: { type: 'array', items: clientView } },
} as const;

export const appRevoked = {
  type: 'object',
  required: ['app_id', 'state'],
  additionalProperties: false,
  properties: { app_id: { type: 'string' }, state: { const: 'revoked' } },
} as const;
export const brokerRevoked = {
  type: 'object',
  required: ['broker_id', 'state'],
  additionalProperties: false,
  properties: { broker_id: { type: 'string' }, state: { const: 'revoked' } },
} as const;

export const poolsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { low_only: { type: 'boolean' } },
} as const;
export const poolsResponse = {
  type: 'object',
  required: ['low_water', 'stale_pending_seconds', 'pools'],
  additionalProperties: false,
  properties: {
    low_water: { type: 'integer' },
    stale_pending_seconds: { type: 'integer' },
    pools: {
      type: 'array',
      items: {
        type: 'object',
        required: ['device_id', 'up', 'down', 'low', 'stale_pending'],
        additionalProperties: false,
        properties: {
          device_id: { type: 'string' },
          up: { type: 'integer' },
          down: { type: 'integer' },
          low: { type: 'boolean' },
          stale_pending: { type: 'integer' },
        },
      },
    },
  },
} as const;
export type PoolsJson = FromSchema<typeof poolsResponse>;

export const auditQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    after: { type: 'integer', minimum: 0 },
    /** Entries older than this id, newest first (paging back from the newest: omit `after`, pass `next` here). */
    before: { type: 'integer', minimum: 1 },
    limit: { type: 'integer', minimum: 1, maximum: 1000 },
    device_id: idSchema,
    action: { type: 'string', maxLength: 64 },
  },
} as const;
export type AuditQuery = FromSchema<typeof auditQuery>;
export const auditResponse = {
  type: 'object',
  required: ['entries'],
  additionalProperties: false,
  properties: {
    entries: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'at', 'actor', 'action', 'device_id', 'detail'],
        additionalProperties: false,
        properties: {
          id: { type: 'integer' },
          at: { type: 'integer' },
          actor: { type: 'string' },
          action: { type: 'string' },
          device_id: nullableString,
          detail: { type: ['object', 'null'], additionalProperties: true },
        },
      },
    },
    next: { type: 'integer' },
  },
} as const;
export type AuditJson = FromSchema<typeof auditResponse>;

const device = { 200: deviceView, ...errorResponses } as const;
const batch = { 200: batchView, ...errorResponses } as const;
export const registerDeviceRoute = {
  body: registerDeviceBody,
  response: { 201: deviceView, ...errorResponses },
} as const;
export const listDevicesRoute = {
  querystring: devicesQuery,
  response: { 200: deviceList, ...errorResponses },
} as const;
export const deviceRoute = { params: deviceParams, response: device } as const;
export const revokeDeviceRoute = {
  params: deviceParams,
  body: revokeDeviceBody,
  response: { 200: deviceRevoked, ...errorResponses },
} as const;
export const deviceKeysRoute = { params: deviceParams, response: { 200: deviceKeys, ...errorResponses } } as const;
export const registerBatchRoute = {
  params: deviceParams,
  body: batchBody,
  response: { 200: batchView, 201: batchView, ...errorResponses },
} as const;
export const batchRoute = { params: batchParams, response: batch } as const;
export const batchesRoute = {
  params: deviceParams,
  querystring: batchesQuery,
  response: { 200: batchList, ...errorResponses },
} as const;
export const registerAppRoute = {
  body: registerAppBody,
  response: { 201: appRegistered, ...errorResponses },
} as const;
export const registerBrokerRoute = {
  body: registerBrokerBody,
  response: { 201: brokerRegistered, ...errorResponses },
} as const;
export const listAppsRoute = { response: { 200: appList, ...errorResponses } } as const;
export const listBrokersRoute = { response: { 200: brokerList, ...errorResponses } } as const;
export const revokeAppRoute = { params: clientParams, response: { 200: appRevoked, ...errorResponses } } as const;
export const revokeBrokerRoute = {
  params: clientParams,
  response: { 200: brokerRevoked, ...errorResponses },
} as const;
export const poolsRoute = { querystring: poolsQuery, response: { 200: poolsResponse, ...errorResponses } } as const;
export const auditRoute = { querystring: auditQuery, response: { 200: auditResponse, ...errorResponses } } as const;
