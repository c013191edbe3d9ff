// JSON schemas shared by the key-service routes; response schemas also keep unlisted fields (secrets) out.

/** Device, app and broker ids: usable as MQTT client ids and topic levels (no '/', '+', '#'). */
export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$';
export const idSchema = { type: 'string', pattern: ID_PATTERN } as const;
export const uuidSchema = {
  type: 'string',
  pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$',
} as const;
export const base64Key128 = { type: 'string', pattern: '^[A-Za-z0-9+/]{22}==$' } as const;

/** ETSI GS QKD 014 error body, plus our stable code. */
export const errorSchema = {
  type: 'object',
  required: ['message', 'code'],
  properties: {
    message: { type: 'string' },
    code: { type: 'string' },
    details: { type: 'array', items: { type: 'object', additionalProperties: true } },
  },
} as const;

export const errorResponses = {
  '4xx': errorSchema,
  '5xx': errorSchema,
} as const;

export const deviceView = {
  type: 'object',
  properties: {
    device_id: { type: 'string' },
    serial: { type: ['string', 'null'] },
    state: { type: 'string' },
    created_at: { type: 'integer' },
    revoked_at: { type: ['integer', 'null'] },
    revoke_reason: { type: ['string', 'null'] },
    has_login_key: { type: 'boolean' },
    pool: {
      type: 'object',
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
        properties: { batch_id: { type: 'string' }, created_at: { type: 'integer' }, stale: { type: 'boolean' } },
      },
    },
  },
} as const;

/** The envelope suites a chip can declare at a fill (docs/PROTOCOL.md §2). */
export const suitesSchema = {
  type: 'array',
  minItems: 1,
  maxItems: 2,
  uniqueItems: true,
  items: { enum: [1, 2] },
} as const;

export const batchView = {
  type: 'object',
  properties: {
    batch_id: { type: 'string' },
    device_id: { type: 'string' },
    state: { type: 'string' },
    up_count: { type: 'integer' },
    down_count: { type: 'integer' },
    has_login_key: { type: 'boolean' },
    created_at: { type: 'integer' },
    settled_at: { type: ['integer', 'null'] },
    suites: { type: ['array', 'null'], items: { type: 'integer' } },
  },
} as const;
