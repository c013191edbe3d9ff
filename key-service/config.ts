// Key-service configuration: defaults, then a JSON config file, then QKEY_KMS_* environment, then CLI flags.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { LoginLimitSettings } from './login-limits.js';

export interface KmsConfig {
  /** Address to listen on; loopback by default. */
  host: string;
  /** TCP port; 0 picks a free one. */
  port: number;
  /** Folder for the SQLite database, the master key and the admin token. */
  dataDir: string;
  /** Identity of this key service in ETSI GS QKD 014 status responses (source_KME_ID). */
  kmeId: string;
  /** Token lifetimes in seconds, per role. */
  tokenTtl: { device: number; app: number; broker: number };
  /** How long a login challenge may be answered, in seconds. */
  challengeTtl: number;
  /** A device pool with fewer unused keys than this is reported low. */
  lowWater: number;
  /** ETSI 014 max_key_per_request. */
  maxKeysPerRequest: number;
  /** Login attempt and challenge limits (login-limits.ts), and the challenge book's bounds. */
  loginLimits: LoginLimitSettings & { openChallengesPerSource: number; maxOpenChallenges: number };
  /** Reverse proxies (addresses or CIDRs) whose X-Forwarded-For is believed; none by default. */
  trustProxy: readonly string[];
  /** Most claim requests committed in one transaction. */
  claimBatchMax: number;
  /** Largest accepted HTTP body, bytes (a fill batch of 4096 keys is about 300 KiB). */
  bodyLimit: number;
  /** pino log level. */
  logLevel: string;
  /** Admin bearer token; when absent one is created in `<dataDir>/admin-token`. */
  adminToken?: string;
  /** TLS certificate and key files (PEM); plain HTTP when absent. */
  tls?: { cert: string; key: string };
}

export const KMS_DEFAULTS: Readonly<KmsConfig> = Object.freeze({
  host: '127.0.0.1',
  port: 7070,
  dataDir: './data',
  kmeId: 'qkey-kms',
  tokenTtl: Object.freeze({ device: 600, app: 3600, broker: 3600 }),
  challengeTtl: 60,
  lowWater: 16,
  maxKeysPerRequest: 16,
  loginLimits: Object.freeze({
    perSource: 100,
    perSubjectSource: 10,
    perSubject: 1000,
    maxBackoffSeconds: 900,
    forgetSeconds: 3600,
    challengeRate: 10,
    challengeBurst: 100,
    openChallengesPerSource: 100,
    maxOpenChallenges: 100_000,
  }),
  trustProxy: Object.freeze([]),
  claimBatchMax: 512,
  bodyLimit: 1024 * 1024,
  logLevel: 'info',
});

export type KmsOverrides = Partial<Omit<KmsConfig, 'tokenTtl' | 'loginLimits'>> & {
  tokenTtl?: Partial<KmsConfig['tokenTtl']>;
  loginLimits?: Partial<KmsConfig['loginLimits']>;
};

function fromEnv(env: NodeJS.ProcessEnv): KmsOverrides {
  const out: KmsOverrides = {};
  if (env.QKEY_KMS_HOST) out.host = env.QKEY_KMS_HOST;
  if (env.QKEY_KMS_PORT) out.port = Number(env.QKEY_KMS_PORT);
  if (env.QKEY_KMS_DATA) out.dataDir = env.QKEY_KMS_DATA;
  if (env.QKEY_KMS_LOG_LEVEL) out.logLevel = env.QKEY_KMS_LOG_LEVEL;
  if (env.QKEY_ADMIN_TOKEN) out.adminToken = env.QKEY_ADMIN_TOKEN;
  return out;
}

function merge(base: KmsConfig, o: KmsOverrides): KmsConfig {
  return {
    ...base,
    ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)),
    tokenTtl: { ...base.tokenTtl, ...o.tokenTtl },
    loginLimits: { ...base.loginLimits, ...o.loginLimits },
  } as KmsConfig;
}

function check(c: KmsConfig): KmsConfig {
  const int = (v: number, name: string, min: number, max: number) => {
    if (!Number.isInteger(v) || v < min || v > max)
      throw new Error(`config: ${name} must be an integer in [${min}, ${max}]`);
  };
  int(c.port, 'port', 0, 65535);
  int(c.challengeTtl, 'challengeTtl', 5, 3600);
  int(c.lowWater, 'lowWater', 0, 1_000_000);
  int(c.maxKeysPerRequest, 'maxKeysPerRequest', 1, 1024);
  int(c.claimBatchMax, 'claimBatchMax', 1, 100_000);
  int(c.bodyLimit, 'bodyLimit', 1024, 64 * 1024 * 1024);
  for (const [role, ttl] of Object.entries(c.tokenTtl)) int(ttl, `tokenTtl.${role}`, 10, 86_400 * 30);
  for (const [k, v] of Object.entries(c.loginLimits)) int(v, `loginLimits.${k}`, 1, 1_000_000);
  if (typeof c.dataDir !== 'string' || c.dataDir === '') throw new Error('config: dataDir must be a path');
  return c;
}

/** Defaults < config file (`configFile` or QKEY_KMS_CONFIG) < environment < `overrides` (CLI flags). */
export function loadKmsConfig(
  overrides: KmsOverrides = {},
  options: { configFile?: string | undefined; env?: NodeJS.ProcessEnv } = {},
): Readonly<KmsConfig> {
  const env = options.env ?? process.env;
  const file = options.configFile ?? env.QKEY_KMS_CONFIG;
  let fileConfig: KmsOverrides = {};
  if (file) {
    try {
      fileConfig = JSON.parse(readFileSync(file, 'utf8')) as KmsOverrides;
    } catch (err) {
      throw new Error(`config: cannot read ${file}: ${(err as Error).message}`);
    }
  }
  const config = check(merge(merge(merge({ ...KMS_DEFAULTS } as KmsConfig, fileConfig), fromEnv(env)), overrides));
  return Object.freeze({ ...config, dataDir: resolve(config.dataDir) });
}
