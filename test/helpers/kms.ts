// Test fixtures: a key service in a temp folder on a free loopback port, with its logs captured, and provisioning helpers.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { BuildOptions } from '../../key-service/app.js';
import { type KmsOverrides, loadKmsConfig } from '../../key-service/config.js';
import { initDataDir } from '../../key-service/data-dir.js';
import { KmsClient, type UplinkProof } from '../../kms-api/client.js';
import { keyIdFor, sealEnvelope, type SuiteId } from '../../protocol/index.js';
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

export interface ProofOptions {
  /** Default: `devices/{deviceId}/up/t` (a will is sealed for the topic of the device's CONNECT will). */
  topic?: string;
  /** Default 'up'. A will is sealed with sequence number 0 (docs/PROTOCOL.md §2). */
  direction?: 'up' | 'will';
  /** Default 1 for 'up' (a session's first message), 0 for 'will'. */
  seq?: number;
  payload?: Uint8Array;
  suite?: SuiteId;
  /** Largest payload sealEnvelope accepts; default DEFAULT_MAX_PAYLOAD. */
  maxPayload?: number;
  /** The device id bound into the AAD; default: the device's own. */
  sealedBy?: string;
}

/**
 * A proof of use of key `keyIndex` (docs/KMS-API.md "Proof of use"): a small envelope sealed under `key`, as device
 * `deviceId` would seal its first message under that key.
 */
export function proofFor(deviceId: string, keyIndex: number, key: Uint8Array, options: ProofOptions = {}): UplinkProof {
  const direction = options.direction ?? 'up';
  const topic = options.topic ?? `devices/${deviceId}/up/t`;
  const envelope = sealEnvelope(options.payload ?? new TextEncoder().encode('21.5'), {
    key,
    keyIndex,
    seq: options.seq ?? (direction === 'will' ? 0 : 1),
    deviceId: options.sealedBy ?? deviceId,
    topic,
    direction,
    ...(options.suite === undefined ? {} : { suite: options.suite }),
    ...(options.maxPayload === undefined ? {} : { maxPayload: options.maxPayload }),
  });
  return { envelope, topic, direction };
}

/** The proof of use of a provisioned device's key `index`, sealed under the key it was provisioned with. */
export function uplinkProof(dev: ProvisionedDevice, index: number, options: ProofOptions = {}): UplinkProof {
  const k = dev.keys.get(index);
  if (!k) throw new Error(`${dev.deviceId} has no key ${index}`);
  return proofFor(dev.deviceId, index, k.key, options);
}

/** ETSI 014 dec_keys for a provisioned device's uplink keys, each with a valid proof of use. */
export function claimUplink(broker: KmsClient, dev: ProvisionedDevice, indices: number | number[], sessionId?: string) {
  const list = typeof indices === 'number' ? [indices] : indices;
  return broker.decKeys(
    dev.deviceId,
    list.map((i) => keyIdFor(dev.deviceId, i)),
    sessionId,
    list.map((i) => uplinkProof(dev, i)),
  );
}
