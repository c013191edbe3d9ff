// A key service and a broker started in this process on free loopback ports, quiet, for `qkey sim` and benchmarks.
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { type BrokerOverrides, loadBrokerConfig } from '../broker/config.js';
import { type RunningBroker, startBroker } from '../broker/server.js';
import { KmsClient } from '../kms-api/client.js';
import { type KmsOverrides, loadKmsConfig } from '../key-service/config.js';
import { ensureDataDir } from '../key-service/data-dir.js';
import { type RunningKms, startKms } from '../key-service/server.js';

export interface LocalSystem {
  kms: RunningKms;
  broker: RunningBroker;
  /** An admin client of the key service. */
  admin: KmsClient;
  adminToken: string;
  close(): Promise<void>;
}

/**
 * Login limits for a system whose devices all log in from this one host (simulations, benchmarks): the per-source
 * challenge rate that protects a public key service would turn a single-host load generator away.
 */
export const SINGLE_HOST_LOGIN_LIMITS = Object.freeze({
  challengeRate: 100_000,
  challengeBurst: 1_000_000,
  openChallengesPerSource: 100_000,
});

export async function startLocalSystem(
  dataDir: string,
  options: { kms?: KmsOverrides; broker?: BrokerOverrides; brokerId?: string } = {},
): Promise<LocalSystem> {
  const adminToken = randomBytes(16).toString('hex');
  ensureDataDir(dataDir, { adminToken });
  const kms = await startKms(
    loadKmsConfig(
      { port: 0, dataDir, logLevel: 'error', adminToken, loginLimits: SINGLE_HOST_LOGIN_LIMITS, ...options.kms },
      { env: {} },
    ),
  );
  const admin = new KmsClient(kms.url, { token: adminToken });
  const brokerId = options.brokerId ?? 'local-broker';
  try {
    const { client_secret } = await admin.registerBroker(brokerId);
    const broker = await startBroker(
      loadBrokerConfig(
        // The broker's store lives in the same folder as the key service's, never in the caller's working directory.
        {
          mqtt: { port: 0 },
          http: null,
          kmsUrl: kms.url,
          brokerId,
          brokerSecret: client_secret,
          dataDir,
          ...options.broker,
        },
        { env: {} },
      ),
      { logger: pino({ level: 'silent' }) },
    );
    return {
      kms,
      broker,
      admin,
      adminToken,
      async close() {
        await broker.close();
        await kms.close();
      },
    };
  } catch (err) {
    await kms.close();
    throw err;
  }
}
