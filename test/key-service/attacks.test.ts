// An outsider's attacks on the key service that are not about one route's spelling or login limits: a revoked
// broker still claiming, hostile bodies, request targets and headers, and what its answers and logs carry.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsHttpError, type KmsClient } from '../../kms-api/client.js';
import { keyIdFor } from '../../protocol/index.js';
import { brokerClient, provisionDevice, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

let t: TestKms;

beforeAll(async () => {
  t = await startTestKms();
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

async function outcome(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'OK',
    (e: KmsHttpError) => `${e.status} ${e.code}`,
  );
}

describe('a revoked broker', () => {
  it('gets no key from the moment its revocation is answered, even with a token that just worked', async () => {
    await provisionDevice(t.admin, 'dev-rb', 4, 4);
    const broker: KmsClient = await brokerClient(t, 'broker-rb');
    // The broker is busy: its token and its active state were just checked.
    expect((await broker.encKeys('dev-rb', 1)).keys).toHaveLength(1);
    await t.admin.revokeClient('broker', 'broker-rb');
    expect(await outcome(broker.encKeys('dev-rb', 1))).toBe('401 KMS_ERR_UNAUTHORIZED');
    expect(await outcome(broker.decKeys('dev-rb', [keyIdFor('dev-rb', 0)]))).toBe('401 KMS_ERR_UNAUTHORIZED');
    // Nothing was claimed for it after the revocation.
    const keys = await t.admin.request<{ keys: Array<{ state: string }> }>('GET', '/api/v1/admin/devices/dev-rb/keys');
    expect(keys.keys.filter((k) => k.state === 'claimed')).toHaveLength(1);
  });
});
