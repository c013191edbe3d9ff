// Wire contract of the policy table: one entry maps (role or principal, topic filter) to what the broker enforces
// there. The admin routes manage it, brokers poll it by version. Pure data; docs/KMS-API.md §Policies explains it.
import type { FromSchema } from 'json-schema-to-ts';
import { errorResponses, idSchema } from './common-schemas.js';

/** Entries the table holds at most: brokers evaluate it per message and download it whole on each change. */
export const MAX_POLICY_ENTRIES = 10_000;
/** [MQTT-1.5.3] a topic filter is at most 65,535 bytes; a policy filter is held to 1,024 characters. */
export const MAX_POLICY_FILTER_LENGTH = 1024;
/** [MQTT-2.2.3] the largest Remaining Length, so the largest payload any MQTT 3.1.1 packet can carry. */
export const MAX_MQTT_PAYLOAD = 268_435_455;

/**
 * How a matching message travels between the subject and the broker:
 * - `required`: sealed in the envelope (devices today; an application only through an application session);
 * - `optional`: sealed when the sender sealed it, otherwise plaintext (the broker seals what it sends when it can);
 * - `plaintext`: never sealed;
 * - `end-to-end` (device entries only): sealed by the device for one application, named by `app`, which claims the
 *   device's keys itself; the broker checks the envelope's header and forwards it unopened (docs/PROTOCOL.md §23).
 * A broker that receives a mode it does not know refuses every message the entry governs (fail closed,
 * policy/evaluate.ts).
 */
export const ENCRYPTION_MODES = ['required', 'optional', 'plaintext', 'end-to-end'] as const;
export type EncryptionMode = (typeof ENCRYPTION_MODES)[number];

export const POLICY_ROLES = ['device', 'app'] as const;
export type PolicyRole = (typeof POLICY_ROLES)[number];

const positive = { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER } as const;

/** What an entry decides; every field but `encryption` is optional (absent: the broker's own configuration). */
const ruleProperties = {
  role: { enum: POLICY_ROLES },
  /** One device or application id; absent: every principal of the role. */
  principal: idSchema,
  /** An MQTT topic filter (§4.7): '+' and '#' only as whole levels, '#' only last (checked by the service). */
  filter: { type: 'string', minLength: 1, maxLength: MAX_POLICY_FILTER_LENGTH },
  encryption: { enum: ENCRYPTION_MODES },
  /**
   * `end-to-end` only: the one application that may claim the keys of the messages this entry governs, and so read
   * them (docs/KMS-API.md, End-to-end topics).
   */
  app: idSchema,
  /** Envelope suites allowed (protocol/suites.ts ids: 1 SM4-GCM, 2 SM4-CTR-HMAC-SM3); absent: any. */
  suites: { type: 'array', minItems: 1, maxItems: 255, uniqueItems: true, items: { enum: [1, 2] } },
  /** Upper bounds on one downlink key's use before the session rotates it (tighter than the broker's wins). */
  rotation: {
    type: 'object',
    minProperties: 1,
    additionalProperties: false,
    properties: { messages: positive, bytes: positive, seconds: positive },
  },
  /** Largest plaintext payload, bytes. */
  max_payload: { type: 'integer', minimum: 0, maximum: MAX_MQTT_PAYLOAD },
  /** Highest QoS the subject may publish with. */
  max_qos: { enum: [0, 1, 2] },
  /** Whether the subject may publish retained messages. */
  retain: { type: 'boolean' },
} as const;

export const policyBody = {
  type: 'object',
  required: ['role', 'filter', 'encryption'],
  additionalProperties: false,
  properties: ruleProperties,
} as const;
export type PolicyBodyJson = FromSchema<typeof policyBody>;

export const policyEntry = {
  type: 'object',
  required: ['policy_id', 'role', 'filter', 'encryption', 'version', 'updated_at'],
  additionalProperties: false,
  properties: {
    policy_id: { type: 'string' },
    ...ruleProperties,
    // The response schema does not re-check what the service stored; a newer mode must still reach the broker.
    encryption: { type: 'string' },
    suites: { type: 'array', items: { type: 'integer' } },
    /** The table version at which this entry was last set. */
    version: { type: 'integer' },
    updated_at: { type: 'integer' },
  },
} as const;
export type PolicyEntryJson = FromSchema<typeof policyEntry>;

export const policyTable = {
  type: 'object',
  required: ['version', 'entries'],
  additionalProperties: false,
  properties: { version: { type: 'integer' }, entries: { type: 'array', items: policyEntry } },
} as const;
export type PolicyTableJson = FromSchema<typeof policyTable>;

/** The brokers' poll: the whole table when its version differs from `known`, only the version otherwise. */
export const policyFeedQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { known: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } },
} as const;
export const policyFeed = {
  type: 'object',
  required: ['version'],
  additionalProperties: false,
  properties: { version: { type: 'integer' }, entries: { type: 'array', items: policyEntry } },
} as const;
export type PolicyFeedJson = FromSchema<typeof policyFeed>;

export const policyParams = {
  type: 'object',
  required: ['policy_id'],
  additionalProperties: false,
  properties: { policy_id: idSchema },
} as const;

export const policyDeleted = {
  type: 'object',
  required: ['policy_id', 'deleted', 'version'],
  additionalProperties: false,
  properties: { policy_id: { type: 'string' }, deleted: { const: true }, version: { type: 'integer' } },
} as const;

export const listPoliciesRoute = { response: { 200: policyTable, ...errorResponses } } as const;
export const policyRoute = { params: policyParams, response: { 200: policyEntry, ...errorResponses } } as const;
export const setPolicyRoute = {
  params: policyParams,
  body: policyBody,
  response: { 200: policyEntry, 201: policyEntry, ...errorResponses },
} as const;
export const deletePolicyRoute = {
  params: policyParams,
  response: { 200: policyDeleted, ...errorResponses },
} as const;
export const policyFeedRoute = {
  querystring: policyFeedQuery,
  response: { 200: policyFeed, ...errorResponses },
} as const;
