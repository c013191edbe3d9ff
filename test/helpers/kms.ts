// Test fixtures: a key service in a temp folder on a free loopback port, with its logs captured, and provisioning helpers.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { BuildOptions } from '../../key-service/app.js';
import { type KmsOverrides, loadKmsConfig } from '../../key-service/config.js';
import { initDataDir } from '../../key-service/data-dir.js';
import { KmsClient } from '../../kms-api/client.js';
import { type RunningKms, startKms } from '../../key-service/server.js';

export interface TestKms {
  url: string;
  dataDir: string;
  kms: RunningKms;
  admin: KmsClient;
  anon: KmsClient;
  logs(): string;
  stop(): Promise<void>;
}

export function tempDir(prefix = 'qkey-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A temp folder initialised as a new key service (as `qkey kms init` does); starting never creates one. */
export function newKmsDir(): string {
  const dir = tempDir();
  initDataDir(dir);
  return dir;
}

/** Starts a key service on `dataDir`, which must hold one already (default: a new one from newKmsDir()). */
export async function startTestKms(
  overrides: KmsOverrides = {},
  dataDir = newKmsDir(),
  options: BuildOptions = {},
): Promise<TestKms> {
  const chunks: string[] = [];
  const logStream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  const config = loadKmsConfig(
    { port: 0, dataDir, logLevel: 'info', adminToken: 'test-admin-token', ...overrides },
    { env: {} },
  );
  const kms = await startKms(config, { logStream, ...options });
  return {
    url: kms.url,
    dataDir,
    kms,
    admin: new KmsClient(kms.url, { token: config.adminToken! }),
    anon: new KmsClient(kms.url),
    logs: () => chunks.join(''),
    async stop() {
      await kms.close();
    },
  };
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface ProvisionedDevice {
  deviceId: string;
  loginKey: Buffer;
  /** Raw keys by key index, as the chip would hold them. */
  keys: Map<number, { direction: 'up' | 'down'; key: Buffer }>;
}

/** Registers a device and fills (registers and commits) a batch of `up` + `down` keys and a login key. */
export async function provisionDevice(
  admin: KmsClient,
  deviceId: string,
  up = 4,
  down = 4,
  batchId = `${deviceId}-b1`,
): Promise<ProvisionedDevice> {
  await admin.registerDevice(deviceId);
  const loginKey = randomBytes(16);
  const keys = new Map<number, { direction: 'up' | 'down'; key: Buffer }>();
  for (let i = 0; i < up + down; i++) keys.set(i, { direction: i < up ? 'up' : 'down', key: randomBytes(16) });
  await admin.registerBatch(deviceId, {
    batch_id: batchId,
    login_key: loginKey.toString('base64'),
    keys: [...keys].map(([key_index, k]) => ({ key_index, direction: k.direction, key: k.key.toString('base64') })),
  });
  await admin.commitBatch(deviceId, batchId);
  return { deviceId, loginKey, keys };
}

/** Registers a broker and returns a client holding its token. */
export async function brokerClient(t: TestKms, brokerId = 'broker-1'): Promise<KmsClient> {
  const { client_secret } = await t.admin.registerBroker(brokerId);
  const { access_token } = await t.anon.clientToken(brokerId, client_secret);
  return t.anon.withToken(access_token);
}
