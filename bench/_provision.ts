// Registers a benchmark device at the key service: a login key, one uplink key (index 0), `down` downlink keys.
import { randomBytes } from 'node:crypto';
import type { KmsClient } from '../kms-api/client.js';

export interface BenchDevice {
  id: string;
  loginKey: Buffer;
  uplink: Buffer;
}

/** What a filling machine does for one chip, with random keys held in memory instead of a chip file. */
export async function provisionBenchDevice(admin: KmsClient, id: string, down: number): Promise<BenchDevice> {
  const loginKey = randomBytes(16);
  const uplink = randomBytes(16);
  await admin.registerDevice(id);
  await admin.registerBatch(id, {
    batch_id: `${id}-b`,
    login_key: loginKey.toString('base64'),
    keys: [
      { key_index: 0, direction: 'up', key: uplink.toString('base64') },
      ...Array.from({ length: down }, (_, k) => ({
        key_index: 1 + k,
        direction: 'down' as const,
        key: randomBytes(16).toString('base64'),
      })),
    ],
  });
  await admin.commitBatch(id, `${id}-b`);
  return { id, loginKey, uplink };
}
