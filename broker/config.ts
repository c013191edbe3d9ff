// Broker configuration: one JSON Schema gives the keys, their types, ranges, defaults and environment variables;
// defaults < JSON config file < QKEY_BROKER_* environment < CLI flags, validated as a whole (common/config-loader.ts).
import { resolve } from 'node:path';
import type { FromSchema } from 'json-schema-to-ts';
import { type ConfigSchema, configDefaults, loadConfig } from '../common/config-loader.js';
import { KMS_DEFAULTS } from '../key-service/config.js';
import { DEFAULT_MAX_PAYLOAD, DEVICE_ID_PATTERN, ENVELOPE_OVERHEAD, MAX_PAYLOAD_LIMIT } from '../protocol/index.js';
import type { PacketLimits } from './packet-guard.js';

/** [MQTT-2.2.3] the largest Remaining Length MQTT can encode. */
const MAX_REMAINING_LENGTH = 268_435_455;
const PORT = { type: 'integer', minimum: 0, maximum: 65535 } as const;
const count = (min: number, max: number, byDefault: number) =>
  ({ type: 'integer', minimum: min, maximum: max, default: byDefault }) as const;
/** A listener without TLS; null (or "off" from a flag or the environment) turns it off. */
const plain = {
  type: ['object', 'null'],
  additionalProperties: false,
  required: ['port'],
  properties: { port: PORT },
} as const;
/** A TLS listener: certificate and private key are PEM files, as in the key service's `tls`. */
const secure = {
  type: ['object', 'null'],
  additionalProperties: false,
  required: ['port', 'cert', 'key'],
  properties: {
    port: PORT,
    cert: { type: 'string', minLength: 1, file: true },
    key: { type: 'string', minLength: 1, file: true },
  },
  default: null,
} as const;
const topic = { type: 'string', minLength: 1, maxLength: 1024, pattern: '\\{id\\}' } as const;

/**
 * Every key of the broker's configuration, one per line: add a key here and it is validated, typed, given its
 * default and (with `env`) read from the environment. README "Configuration" lists them.
 */
export const BROKER_CONFIG_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    host: { type: 'string', minLength: 1, default: '127.0.0.1', env: 'QKEY_BROKER_HOST' },
    mqtt: { ...plain, properties: { port: { ...PORT, env: 'QKEY_BROKER_PORT' } }, default: { port: 1883 } },
    tls: secure,
    ws: { ...plain, default: null },
    wss: secure,
    /** Web pages on these origins may open MQTT over ws/wss; an upgrade from any other page is refused (ws-upgrade.ts). */
    wsOrigins: {
      type: 'array',
      maxItems: 64,
      items: { type: 'string', pattern: '^https?://[A-Za-z0-9.\\-\\[\\]:]+$' },
      default: [],
    },
    /** Mutual TLS on the tls and wss listeners (client-certificate.ts): the CA, and whether a token is still needed. */
    clientCertificates: {
      type: ['object', 'null'],
      additionalProperties: false,
      required: ['ca'],
      properties: {
        ca: { type: 'string', minLength: 1, file: true },
        tokenRequired: { type: 'boolean', default: true },
      },
      default: null,
    },
    http: { ...plain, default: { port: 9090 } },
    kmsUrl: {
      type: 'string',
      pattern: '^https?://',
      default: `http://127.0.0.1:${KMS_DEFAULTS.port}`,
      env: 'QKEY_KMS_URL',
    },
    brokerId: {
      type: 'string',
      pattern: DEVICE_ID_PATTERN, // docs/PROTOCOL.md §14: a broker id follows the device id rule
      default: 'qkey-broker',
      env: 'QKEY_BROKER_ID',
    },
    brokerSecret: { type: 'string', minLength: 1, maxLength: 256, writeOnly: true, env: 'QKEY_BROKER_SECRET' },
    dataDir: { type: 'string', minLength: 1, default: './data', env: 'QKEY_KMS_DATA' },
    /** Where sessions, queues and retained messages live: `sqlite` (<dataDir>/broker-<id>.db) or `memory`. */
    persistence: { enum: ['memory', 'sqlite'], default: 'sqlite', env: 'QKEY_BROKER_PERSISTENCE' },
    /** Several brokers: Redis for routing and sessions (broker/redis/); null runs this broker alone
    // on `persistence`, which Redis replaces when set. */
    redis: {
      type: ['string', 'null'],
      pattern: '^rediss?://',
      default: null,
      writeOnly: true,
      env: 'QKEY_BROKER_REDIS',
    },
    topics: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        uplink: { ...topic, default: 'devices/{id}/up/#' },
        downlink: { ...topic, default: 'devices/{id}/down/#' },
        // A topic name, not a filter: no wildcards [MQTT-4.7.3-2].
        status: { ...topic, pattern: '^[^+#]*\\{id\\}[^+#]*$', default: 'devices/{id}/status' },
      },
    },
    rotation: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        messages: count(1, 2 ** 32, 10_000),
        bytes: count(1, 2 ** 40, 16 * 1024 * 1024),
        seconds: count(1, 86_400 * 30, 3600),
      },
    },
    maxPayload: count(1, MAX_PAYLOAD_LIMIT, DEFAULT_MAX_PAYLOAD), // docs/PROTOCOL.md §6
    /** Largest MQTT packet once CONNECT is accepted; when absent, derived from maxPayload (see packetLimits). */
    maxPacketSize: { type: 'integer', minimum: 1, maximum: MAX_REMAINING_LENGTH + 5 },
    /** Bytes a connection may send before its CONNECT is accepted (the CONNECT with its will, and what follows). */
    maxPreConnectBytes: count(1, MAX_REMAINING_LENGTH + 5, 16 * 1024),
    /** Topic filters in one SUBSCRIBE or UNSUBSCRIBE; more closes the connection. */
    maxTopicFiltersPerPacket: count(1, MAX_REMAINING_LENGTH + 5, 32),
    /** Largest plaintext a device can receive: applications' publishes and wills into its downlink space above it are refused. */
    maxDownlinkPayload: count(1, MAX_PAYLOAD_LIMIT, DEFAULT_MAX_PAYLOAD),
    /** Subscriptions one client may hold; SUBACK 0x80 for each filter beyond. */
    maxSubscriptionsPerClient: count(1, 10_000_000, 1000),
    /** QoS 1/2 messages one persistent session's queue holds (waiting or unacknowledged); newer ones dropped. 0: no maximum. */
    maxQueuedMessages: count(0, 10_000_000, 1000),
    /** Payload bytes one persistent session's queue holds; a message that would cross it is dropped. 0: no maximum. */
    maxQueuedBytes: count(0, 2 ** 40, 16 * 1024 * 1024),
    uplinkKeyLingerSeconds: count(0, 86_400, 120),
    maxDownlinkClaimsPerMinute: count(1, 1_000_000, 20),
    /** How long a persistent app session's deliveries that need its session key wait for it (docs/PROTOCOL.md §22.8). */
    appHoldSeconds: count(1, 3600, 30),
    /** Live deliveries such a session holds while it waits; beyond, they stay in its stored queue. */
    appHoldMessages: count(1, 100_000, 1000),
    /** Payload bytes of the live deliveries such a session holds while it waits. */
    appHoldBytes: count(1, 2 ** 32, 16 * 1024 * 1024),
    /** Level of the per-connection log lines (client connected, client disconnected). */
    connectionLogLevel: { enum: ['info', 'debug'], default: 'info' },
    concurrency: count(1, 1_000_000, 2000),
    revocationPollMs: count(100, 3_600_000, 1000),
    logLevel: {
      enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      default: 'info',
      env: 'QKEY_BROKER_LOG_LEVEL',
    },
    semiSpaceMiB: count(0, 1024, 128),
  },
} as const satisfies ConfigSchema;

export type BrokerConfig = FromSchema<typeof BROKER_CONFIG_SCHEMA>;
/** What a config file, the environment or flags may set: any key, each optional. */
export type BrokerOverrides = FromSchema<typeof BROKER_CONFIG_SCHEMA, { keepDefaultedPropertiesOptional: true }>;
export type ListenerConfig = NonNullable<BrokerConfig['tls']> | NonNullable<BrokerConfig['mqtt']>;

export const BROKER_DEFAULTS: Readonly<BrokerConfig> = configDefaults<BrokerConfig>(BROKER_CONFIG_SCHEMA);

/** The packet-guard's bounds; the largest packet defaults to the largest PUBLISH carrying a sealed maxPayload. */
export function packetLimits(c: Readonly<BrokerConfig>): PacketLimits {
  const derived = 5 + 2 + 65_535 + 2 + ENVELOPE_OVERHEAD + c.maxPayload; // fixed header, topic, packet id, envelope
  return {
    maxPacketSize: c.maxPacketSize ?? Math.min(derived, MAX_REMAINING_LENGTH + 5),
    maxPreConnectBytes: c.maxPreConnectBytes,
    maxTopicFiltersPerPacket: c.maxTopicFiltersPerPacket,
  };
}

/** Checks across keys, after each key passed the schema. */
function refine(c: BrokerConfig): string[] {
  const problems: string[] = [];
  if (!c.mqtt && !c.tls && !c.ws && !c.wss)
    problems.push('"mqtt", "tls", "ws" and "wss" are all off: at least one MQTT listener must be on');
  if (c.clientCertificates && !c.tls && !c.wss)
    problems.push('"clientCertificates" needs a tls or wss listener: client certificates come with TLS');
  const largest = Math.max(c.maxPayload, c.maxDownlinkPayload);
  if (c.maxQueuedBytes > 0 && c.maxQueuedBytes < largest)
    problems.push(
      `"maxQueuedBytes" (${c.maxQueuedBytes}) is below the largest payload (${largest}, maxPayload or maxDownlinkPayload): such a message could never be queued for a persistent session`,
    );
  return problems;
}

/** Defaults < config file (`configFile` or QKEY_BROKER_CONFIG) < environment < `overrides` (CLI flags). */
export function loadBrokerConfig(
  overrides: BrokerOverrides = {},
  options: { configFile?: string | undefined; env?: NodeJS.ProcessEnv } = {},
): Readonly<BrokerConfig> {
  const env = options.env ?? process.env;
  const config = loadConfig<BrokerConfig>(BROKER_CONFIG_SCHEMA, {
    file: options.configFile ?? env.QKEY_BROKER_CONFIG,
    env,
    overrides,
    refine,
  });
  return Object.freeze({ ...config, dataDir: resolve(config.dataDir) });
}
