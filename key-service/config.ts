// Key-service configuration: one JSON Schema gives the keys, their types, ranges, defaults and environment variables;
// defaults < JSON config file < QKEY_KMS_* environment < CLI flags, validated as a whole (common/config-loader.ts).
import { resolve } from 'node:path';
import type { FromSchema } from 'json-schema-to-ts';
import { type ConfigSchema, configDefaults, loadConfig } from '../common/config-loader.js';
import { ORIGIN_PATTERN } from './cors.js';

const count = (min: number, max: number, byDefault: number) =>
  ({ type: 'integer', minimum: min, maximum: max, default: byDefault }) as const;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * Every key of the key service's configuration, one per line: add a key here and it is validated, typed, given its
 * default and (with `env`) read from the environment. README "Configuration" lists them.
 */
export const KMS_CONFIG_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    host: { type: 'string', minLength: 1, default: '127.0.0.1', env: 'QKEY_KMS_HOST' },
    port: { type: 'integer', minimum: 0, maximum: 65535, default: 7070, env: 'QKEY_KMS_PORT' },
    dataDir: { type: 'string', minLength: 1, default: './data', env: 'QKEY_KMS_DATA' },
    logLevel: { enum: LOG_LEVELS, default: 'info', env: 'QKEY_KMS_LOG_LEVEL' },
    adminToken: { type: 'string', minLength: 1, maxLength: 512, writeOnly: true, env: 'QKEY_ADMIN_TOKEN' },
    tls: {
      type: 'object',
      additionalProperties: false,
      required: ['cert', 'key'],
      properties: {
        cert: { type: 'string', minLength: 1, file: true },
        key: { type: 'string', minLength: 1, file: true },
        /** CA certificates (PEM file) that issue client certificates: clients are asked for one (ETSI GS QKD 014). */
        ca: { type: 'string', minLength: 1, file: true },
        /** Refuse, at the TLS handshake, every client without a certificate from `ca` (default: optional). */
        requireClientCert: { type: 'boolean' },
      },
    },
    kmeId: { type: 'string', minLength: 1, maxLength: 128, default: 'qkey-kms' },
    tokenTtl: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        device: count(10, 2_592_000, 600),
        app: count(10, 2_592_000, 3600),
        broker: count(10, 2_592_000, 3600),
      },
    },
    challengeTtl: count(5, 3600, 60),
    loginLimits: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        perSource: count(1, 1_000_000, 100),
        perSubjectSource: count(1, 1_000_000, 10),
        perSubject: count(1, 100_000_000, 1000),
        maxBackoffSeconds: count(1, 86_400, 900),
        forgetSeconds: count(1, 2_592_000, 3600),
        challengeRate: count(1, 100_000, 10),
        challengeBurst: count(1, 1_000_000, 100),
        openChallengesPerSource: count(1, 100_000, 100),
        maxOpenChallenges: count(1, 10_000_000, 100_000),
      },
    },
    trustProxy: { type: 'array', maxItems: 64, items: { type: 'string', minLength: 1 }, default: [] },
    /** Web pages on these origins may call the application-session routes from a browser (cors.ts). */
    corsOrigins: {
      type: 'array',
      maxItems: 64,
      items: { type: 'string', pattern: ORIGIN_PATTERN },
      default: [],
    },
    lowWater: count(0, 1_000_000, 16),
    /** A fill batch still pending after this many seconds is reported as a half-done fill. */
    stalePendingSeconds: count(1, 30 * 86_400, 600),
    maxKeysPerRequest: count(1, 1024, 16),
    claimBatchMax: count(1, 100_000, 512),
    bodyLimit: count(1024, 64 * 1024 * 1024, 1024 * 1024),
    /** The administrators' web console at /console (key-service/console/): off unless enabled. */
    console: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        enabled: { type: 'boolean', default: false, env: 'QKEY_KMS_CONSOLE' },
        /** A console session ends after this many seconds without a request, and after maxSessionSeconds in all. */
        idleSeconds: count(60, 86_400, 900),
        maxSessionSeconds: count(60, 7 * 86_400, 8 * 3600),
        /** Brokers' metrics URLs (their http listener's /metrics) that the Brokers page reads, server-side. */
        brokerMetrics: {
          type: 'array',
          maxItems: 32,
          items: { type: 'string', pattern: '^https?://', maxLength: 2048 },
          default: [],
        },
        brokerTimeoutMs: count(100, 30_000, 2000),
        /** Host names (the Host header) the console answers besides the listen host and loopback names. */
        hostnames: {
          type: 'array',
          maxItems: 32,
          items: { type: 'string', pattern: '^[A-Za-z0-9.-]{1,253}$' },
          default: [],
        },
      },
    },
  },
} as const satisfies ConfigSchema;

/** 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

export type KmsConfig = FromSchema<typeof KMS_CONFIG_SCHEMA>;
/** What a config file, the environment or flags may set: any key, each optional. */
export type KmsOverrides = FromSchema<typeof KMS_CONFIG_SCHEMA, { keepDefaultedPropertiesOptional: true }>;

export const KMS_DEFAULTS: Readonly<KmsConfig> = configDefaults<KmsConfig>(KMS_CONFIG_SCHEMA);

/** Defaults < config file (`configFile` or QKEY_KMS_CONFIG) < environment < `overrides` (CLI flags). */
export function loadKmsConfig(
  overrides: KmsOverrides = {},
  options: { configFile?: string | undefined; env?: NodeJS.ProcessEnv } = {},
): Readonly<KmsConfig> {
  const env = options.env ?? process.env;
  const config = loadConfig<KmsConfig>(KMS_CONFIG_SCHEMA, {
    file: options.configFile ?? env.QKEY_KMS_CONFIG,
    env,
    overrides,
    refine: (c: KmsConfig) => [
      ...(c.tls?.requireClientCert && !c.tls.ca ? ['tls.requireClientCert needs tls.ca'] : []),
      // The console's session cookie must not cross a network in clear: off loopback it needs TLS.
      ...(c.console.enabled && !c.tls && !isLoopback(c.host)
        ? [`console.enabled on host ${c.host} needs tls (or a loopback host)`]
        : []),
    ],
  });
  return Object.freeze({ ...config, dataDir: resolve(config.dataDir) });
}
