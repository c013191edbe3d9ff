// KmsCoalescer: the claims and retirements of one event-loop turn travel in one bulk request, each caller gets its
// own answer (or its own refusal), a key service that cannot be reached fails every item of the batch as
// unreachable, and close() sends and waits for the retirements still queued.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient, KmsHttpError, KmsUnreachableError } from '../../kms-api/client.js';
import { KmsCoalescer } from '../../kms-api/coalescer.js';
import { keyIdFor } from '../../protocol/index.js';
import {
  brokerClient,
  provisionDevice,
  type ProvisionedDevice,
  removeDir,
  startTestKms,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;

beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

/** A client that records the path of every request it sends. */
function recording(client: KmsClient): { client: KmsClient; paths: string[] } {
  const paths: string[] = [];
  const wrapped = Object.create(client) as KmsClient;
  wrapped.requestJson = (method, path, json) => {
    paths.push(path);
    return client.requestJson(method, path, json);
  };
  return { client: wrapped, paths };
}

const states = async (dev: ProvisionedDevice) =>
  new Map((await t.admin.deviceKeys(dev.deviceId)).keys.map((k) => [k.key_index, k.state]));

describe('KmsCoalescer', () => {
  it('sends the claims of one turn as one bulk request and answers each caller with its own keys, in order', async () => {
    const devs = await Promise.all([0, 1, 2].map((i) => provisionDevice(t.admin, `co-order-${i}`, 2, 2)));
    const { client, paths } = recording(broker);
    const co = new KmsCoalescer(client);
    const answers = await Promise.all([
      co.decKeys(devs[0]!.deviceId, [keyIdFor(devs[0]!.deviceId, 0)], 's0', [uplinkProof(devs[0]!, 0)]),
      co.encKeys(devs[1]!.deviceId, 1, 's1'),
      co.decKeys(devs[2]!.deviceId, [keyIdFor(devs[2]!.deviceId, 1)], 's2', [uplinkProof(devs[2]!, 1)]),
      co.encKeys(devs[2]!.deviceId, 2, 's2'),
    ]);
    expect(paths).toEqual(['/api/v1/bulk/claims']);
    expect(answers.map((a) => a.keys.map((k) => k.key_ID))).toEqual([
      [keyIdFor(devs[0]!.deviceId, 0)],
      [keyIdFor(devs[1]!.deviceId, 2)],
      [keyIdFor(devs[2]!.deviceId, 1)],
      [keyIdFor(devs[2]!.deviceId, 2), keyIdFor(devs[2]!.deviceId, 3)],
    ]);
    expect(Buffer.from(answers[0]!.keys[0]!.key, 'base64')).toEqual(devs[0]!.keys.get(0)!.key);
    await co.close();
  });

  it('sends a lone request through its ETSI 014 route', async () => {
    const d = await provisionDevice(t.admin, 'co-lone', 1, 1);
    const { client, paths } = recording(broker);
    const co = new KmsCoalescer(client);
    await co.encKeys(d.deviceId, 1, 's');
    expect(paths).toEqual([`/api/v1/keys/${d.deviceId}/enc_keys`]);
  });

  it('fails only the refused item, with the error its single route gives', async () => {
    const ok = await provisionDevice(t.admin, 'co-ok', 2, 2);
    const revoked = await provisionDevice(t.admin, 'co-revoked', 2, 2);
    const forgedFor = await provisionDevice(t.admin, 'co-forged', 2, 2);
    await t.admin.revokeDevice(revoked.deviceId);
    const co = new KmsCoalescer(broker);
    const settled = await Promise.allSettled([
      co.encKeys(revoked.deviceId, 1, 's'),
      co.decKeys(forgedFor.deviceId, [keyIdFor(forgedFor.deviceId, 1)], 's', [uplinkProof(forgedFor, 0)]),
      co.decKeys(ok.deviceId, [keyIdFor(ok.deviceId, 0)], 's', [uplinkProof(ok, 0)]),
    ]);
    expect(settled[0]).toMatchObject({ status: 'rejected', reason: { code: 'KMS_ERR_DEVICE_REVOKED', status: 400 } });
    expect((settled[0] as PromiseRejectedResult).reason).toBeInstanceOf(KmsHttpError);
    expect(settled[1]).toMatchObject({
      status: 'rejected',
      reason: {
        code: 'KMS_ERR_KEY_UNAVAILABLE',
        details: [{ key_ID: keyIdFor(forgedFor.deviceId, 1), reason: 'proof_failed' }],
      },
    });
    expect(settled[2]).toMatchObject({ status: 'fulfilled' });
    expect((await states(forgedFor)).get(1)).toBe('filled');
  });

  it('fails every item of a batch as unreachable when the key service cannot be reached', async () => {
    const unreachable = new KmsClient('http://127.0.0.1:1', { timeoutMs: 2000 });
    const co = new KmsCoalescer(unreachable);
    const settled = await Promise.allSettled([
      co.encKeys('a', 1),
      co.encKeys('b', 1),
      co.retire('a', [keyIdFor('a', 0)]),
    ]);
    for (const s of settled) {
      expect(s.status).toBe('rejected');
      expect((s as PromiseRejectedResult).reason).toBeInstanceOf(KmsUnreachableError);
    }
  });

  it('splits a turn by item count and body size, and sends an item too large for a bulk request alone', async () => {
    const devs = await Promise.all([0, 1, 2, 3, 4].map((i) => provisionDevice(t.admin, `co-split-${i}`, 1, 1)));
    const { client, paths } = recording(broker);
    const co = new KmsCoalescer(client, { maxItems: 2 });
    const keys = await Promise.all(devs.map((d) => co.encKeys(d.deviceId, 1)));
    expect(keys.map((k) => k.keys[0]!.key_ID)).toEqual(devs.map((d) => keyIdFor(d.deviceId, 1)));
    expect(paths).toEqual(['/api/v1/bulk/claims', '/api/v1/bulk/claims', `/api/v1/keys/${devs[4]!.deviceId}/enc_keys`]);

    const big = await provisionDevice(t.admin, 'co-big', 2, 0);
    const small = await provisionDevice(t.admin, 'co-small', 2, 0);
    paths.length = 0;
    const tight = new KmsCoalescer(client, { maxBytes: 900 });
    const payload = new Uint8Array(600);
    await Promise.all([
      tight.decKeys(big.deviceId, [keyIdFor(big.deviceId, 0)], 's', [uplinkProof(big, 0, { payload })]),
      tight.decKeys(small.deviceId, [keyIdFor(small.deviceId, 0)], 's', [uplinkProof(small, 0)]),
    ]);
    expect(paths).toEqual([`/api/v1/keys/${big.deviceId}/dec_keys`, `/api/v1/keys/${small.deviceId}/dec_keys`]);
  });

  it('coalesces retirements across devices; close() sends those still queued and waits for their answer', async () => {
    const devs = await Promise.all([0, 1, 2].map((i) => provisionDevice(t.admin, `co-retire-${i}`, 1, 2)));
    const claimed = await Promise.all(devs.map((d) => broker.encKeys(d.deviceId, 1)));
    const { client, paths } = recording(broker);
    const co = new KmsCoalescer(client);
    const retired = devs.map((d, i) => co.retire(d.deviceId, [claimed[i]!.keys[0]!.key_ID]));
    await co.close(); // in the same turn: nothing was sent yet
    expect(paths).toEqual(['/api/v1/bulk/retirements']);
    expect(await Promise.all(retired)).toEqual([{ retired: 1 }, { retired: 1 }, { retired: 1 }]);
    for (const d of devs) expect((await states(d)).get(1)).toBe('retired');
    // After close, requests still work, one by one.
    const later = await broker.encKeys(devs[0]!.deviceId, 1);
    await co.retire(devs[0]!.deviceId, [later.keys[0]!.key_ID]);
    expect(paths.at(-1)).toBe(`/api/v1/keys/${devs[0]!.deviceId}/retire`);
  });
});
