// The broker's credentials at the key service: a configured secret, or (first run on one machine) self-registration
// with the admin token, keeping the secret in a file only the owner can read. Tokens are refreshed before expiry.
import { join } from 'node:path';
import { KmsClient, KmsHttpError } from '../kms-api/client.js';
import { findAdminToken } from '../common/admin-token.js';
import { readSecretFile, writeSecretFile } from '../common/secret-file.js';

export function secretFile(dataDir: string, brokerId: string): string {
  return join(dataDir, `broker-${brokerId}.secret`);
}

/** The broker's client secret: configured, stored, or registered now (needs the admin token in `dataDir`). */
export async function brokerSecret(
  kmsUrl: string,
  brokerId: string,
  dataDir: string,
  configured?: string,
): Promise<string> {
  if (configured) return configured;
  const file = secretFile(dataDir, brokerId);
  const stored = readSecretFile(file);
  if (stored) return stored;
  const adminToken = findAdminToken(dataDir);
  if (!adminToken) {
    throw new Error(
      `no broker secret: set QKEY_BROKER_SECRET (from 'qkey admin broker add ${brokerId}') or run next to the key service's data folder`,
    );
  }
  let secret: string;
  try {
    secret = (await new KmsClient(kmsUrl, { token: adminToken }).registerBroker(brokerId)).client_secret;
  } catch (err) {
    if (err instanceof KmsHttpError && err.code === 'KMS_ERR_CONFLICT') {
      throw new Error(
        `broker ${brokerId} is registered but its secret file ${file} is missing; set QKEY_BROKER_SECRET or register a new broker id`,
      );
    }
    throw err;
  }
  writeSecretFile(file, secret);
  return secret;
}

/** A key-service client whose broker token is renewed at half its lifetime. */
export class BrokerKmsSession {
  /** Always sends the current broker token, so renewals reach every holder of this client. */
  readonly client: KmsClient;
  private token = '';
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly kmsUrl: string,
    private readonly brokerId: string,
    private readonly secret: string,
  ) {
    this.client = new KmsClient(kmsUrl, { token: () => this.token });
  }

  async start(): Promise<KmsClient> {
    await this.renew();
    return this.client;
  }

  private async renew(): Promise<void> {
    const { access_token, expires_in } = await new KmsClient(this.kmsUrl).clientToken(this.brokerId, this.secret);
    this.token = access_token;
    this.schedule(Math.max(5, expires_in / 2) * 1000);
  }

  private schedule(ms: number): void {
    this.timer = setTimeout(() => {
      this.renew().catch(() => this.schedule(5000)); // key service away: try again soon, keep the old token
    }, ms);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
  }
}
