// The package's main entry (`import ... from 'qkey-mqtt'`): the QKey plugin for an Aedes you run yourself, what it
// needs from the key service, and the whole broker as `qkey broker` runs it.
import { KmsClient } from '../kms-api/client.js';
import { BrokerKmsSession } from './credentials.js';
import { TokenAuthority } from './token-authority.js';

export { createQkeyPlugin, QkeyPlugin, APP_CLIENT_ID_SEPARATOR } from './plugin.js';
export type {
  ConnectAttempt,
  DownlinkOutcome,
  HookName,
  PluginCounters,
  PluginEvents,
  QkeyPluginOptions,
  RejectReason,
  UplinkOutcome,
} from './plugin.js';
export { TokenAuthority } from './token-authority.js';
export { createBoundedEmitter } from './mq-emitter.js';
export { coalesceWrites } from './write-coalescing.js';
export { startBroker, type RunningBroker } from './server.js';
export { loadBrokerConfig, type BrokerConfig, type BrokerOverrides } from './config.js';

export interface KeyServiceConnection {
  /** A key-service client holding this broker's token, renewed at half its lifetime. */
  kms: KmsClient;
  /** Token checks and the followed revocation feed. */
  tokens: TokenAuthority;
  /** Stops renewing the token and following the feed. */
  close(): void;
}

/**
 * Logs in to the key service as a registered broker (`qkey admin broker add <id>` prints its secret) and starts
 * following its revocation feed: the `kms` and `tokens` that createQkeyPlugin() takes.
 */
export async function connectToKeyService(options: {
  kmsUrl: string;
  brokerId: string;
  brokerSecret: string;
  /** How often the revocation feed is read, ms (default 1000). */
  revocationPollMs?: number;
}): Promise<KeyServiceConnection> {
  const session = new BrokerKmsSession(options.kmsUrl, options.brokerId, options.brokerSecret);
  const kms = await session.start();
  const tokens = new TokenAuthority(kms, { pollMs: options.revocationPollMs ?? 1000 });
  try {
    await tokens.start();
  } catch (err) {
    session.stop();
    throw err;
  }
  return {
    kms,
    tokens,
    close() {
      tokens.stop();
      session.stop();
    },
  };
}
