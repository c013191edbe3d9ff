// Key-service configuration: one JSON Schema gives the keys, their types, ranges, defaults and environment variables;
// defaults < JSON config file < QKEY_KMS_* environment < CLI flags, validated as a whole (common/config-loader.ts).
import { resolve } from 'node:path';
import type { FromSchema } from 'json-schema-to-ts';
import { type ConfigSchema, configDefaults, loadConfig } from '../common/config-loader.js';

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
    lowWater: count(0, 1_000_000, 16),
    maxKeysPerRequest: count(1, 1024, 16),
    claimBatchMax: count(1, 100_000, 512),
    bodyLimit: count(1024, 64 * 1024 * 1024, 1024 * 1024),
  },
} as const satisfies ConfigSchema;

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
    refine: (c: KmsConfig) => (c.tls?.requireClientCert && !c.tls.ca ? ['tls.requireClientCert needs tls.ca'] : []),
  });
  return Object.freeze({ ...config, dataDir: resolve(config.dataDir) });
}
