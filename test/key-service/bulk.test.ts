// The bulk extension routes (docs/KMS-API.md "Bulk extension") under attack: another broker's keys, devices that
// cannot be served, mixed valid and invalid items, duplicates, oversized and malformed requests, replayed proofs.
// Each item must be answered exactly as its single route would answer it, and never decide another item's fate.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BulkClaimItem, BulkClaimsJson, BulkRetireJson } from '../../kms-api/bulk-schemas.js';
import { BULK_BODY_LIMIT, MAX_BULK_ITEMS } from '../../kms-api/bulk-schemas.js';
import { decKeysBody, encKeysBody, KmsHttpError, type KmsClient } from '../../kms-api/client.js';
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
let other: KmsClient;

beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t, 'broker-1');
  other = await brokerClient(t, 'broker-2');
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

/** The claim item of uplink keys `indices` of `dev`, each with a valid proof unless `proofs` says otherwise. */
function decItem(dev: ProvisionedDevice, indices: number[], proofs = indices.map((i) => uplinkProof(dev, i))) {
  return {
    SAE_ID: dev.deviceId,
    dec_keys: decKeysBody(
      indices.map((i) => keyIdFor(dev.deviceId, i)),
      'bulk-session',
      proofs,
    ),
  };
}
const encItem = (deviceId: string, number = 1): BulkClaimItem => ({
  SAE_ID: deviceId,
  enc_keys: encKeysBody(number, 'bulk-session'),
});
const claims = (client: KmsClient, items: unknown[]) =>
  client.request<BulkClaimsJson>('POST', '/api/v1/bulk/claims', { claims: items });
const retirements = (client: KmsClient, items: unknown[]) =>
  client.request<BulkRetireJson>('POST', '/api/v1/bulk/retirements', { retirements: items });

async function stateOf(dev: ProvisionedDevice, index: number) {
  const { keys } = await t.admin.deviceKeys(dev.deviceId);
  return keys.find((k) => k.key_index === index)!;
}

async function refusal(p: Promise<unknown>): Promise<KmsHttpError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(KmsHttpError);
  return err as KmsHttpError;
}

describe('bulk claims', () => {
  it('answers each item as its single route would, in order, one refusal failing no other item', async () => {
    const a = await provisionDevice(t.admin, 'bulk-a', 4, 2);
    const b = await provisionDevice(t.admin, 'bulk-b', 4, 2);
    const c = await provisionDevice(t.admin, 'bulk-c', 4, 0); // no downlink keys at all
    const forged = uplinkProof(b, 0);
    forged.envelope = forged.envelope.map((x, i) => (i === forged.envelope.length - 1 ? x ^ 1 : x));
    const { results } = await claims(broker, [
      decItem(a, [0]),
      decItem(b, [0], [forged]),
      encItem(c.deviceId),
      encItem(a.deviceId, 2),
      decItem(c, [1]),
    ]);
    expect(results).toHaveLength(5);
    expect(results[0]!.keys!.map((k) => k.key_ID)).toEqual([keyIdFor(a.deviceId, 0)]);
    expect(Buffer.from(results[0]!.keys![0]!.key, 'base64')).toEqual(a.keys.get(0)!.key);
    expect(results[1]!.error).toMatchObject({ status: 400, code: 'KMS_ERR_KEY_UNAVAILABLE' });
    expect(results[1]!.error!.details).toEqual([{ key_ID: keyIdFor(b.deviceId, 0), reason: 'proof_failed' }]);
    expect(results[2]!.error).toMatchObject({ status: 503, code: 'KMS_ERR_POOL_EMPTY' });
    expect(results[3]!.keys!.map((k) => k.key_ID_extension.qkey_key_index)).toEqual([4, 5]);
    expect(results[4]!.keys!.map((k) => k.key_ID)).toEqual([keyIdFor(c.deviceId, 1)]);
    // The refused key stays claimable with a valid proof.
    expect((await stateOf(b, 0)).state).toBe('filled');
    expect((await claims(broker, [decItem(b, [0])])).results[0]!.keys).toHaveLength(1);
    // Claimed by the caller, in the session the item named.
    expect(await stateOf(a, 0)).toMatchObject({
      state: 'claimed',
      claimed_by: 'broker-1',
      claimed_session: 'bulk-session',
    });
  });

  it('keeps each item all or nothing: one bad key of an item leaves its other keys unclaimed', async () => {
    const d = await provisionDevice(t.admin, 'bulk-aon', 4, 0);
    const e = await provisionDevice(t.admin, 'bulk-aon-2', 4, 0);
    const { results } = await claims(broker, [
      decItem(d, [1, 2], [uplinkProof(d, 1), uplinkProof(d, 1)]), // key 2's proof is key 1's envelope
      decItem(e, [0]),
    ]);
    expect(results[0]!.error!.details).toEqual([{ key_ID: keyIdFor(d.deviceId, 2), reason: 'proof_failed' }]);
    expect((await stateOf(d, 1)).state).toBe('filled');
    expect((await stateOf(d, 2)).state).toBe('filled');
    expect(results[1]!.keys).toHaveLength(1);
  });

  it('serves no device it may not: unknown, revoked, another device’s key named under this SAE_ID', async () => {
    const ok = await provisionDevice(t.admin, 'bulk-ok', 2, 2);
    const revoked = await provisionDevice(t.admin, 'bulk-revoked', 2, 2);
    const victim = await provisionDevice(t.admin, 'bulk-victim', 2, 2);
    await t.admin.revokeDevice(revoked.deviceId);
    const { results } = await claims(broker, [
      encItem('bulk-nobody'),
      encItem(revoked.deviceId),
      decItem(revoked, [0]),
      // victim's key and proof, claimed as if it were ok's key
      {
        SAE_ID: ok.deviceId,
        dec_keys: decKeysBody([keyIdFor(victim.deviceId, 0)], undefined, [uplinkProof(victim, 0)]),
      },
      encItem(ok.deviceId),
    ]);
    expect(results.map((r) => r.error?.code ?? 'ok')).toEqual([
      'KMS_ERR_UNKNOWN_DEVICE',
      'KMS_ERR_DEVICE_REVOKED',
      'KMS_ERR_DEVICE_REVOKED',
      'KMS_ERR_KEY_UNAVAILABLE',
      'ok',
    ]);
    expect(results[3]!.error!.details).toEqual([{ key_ID: keyIdFor(victim.deviceId, 0), reason: 'unknown' }]);
    expect((await stateOf(victim, 0)).state).toBe('filled');
  });

  it('leaves no trace of a refused one-key item in a batch: its key unclaimed, no audit entry; the others audited', async () => {
    const d = await provisionDevice(t.admin, 'bulk-trace', 3, 1);
    const forged = uplinkProof(d, 1);
    forged.envelope = forged.envelope.map((x, i) => (i === forged.envelope.length - 1 ? x ^ 1 : x));
    const { results } = await claims(broker, [
      decItem(d, [0]),
      decItem(d, [1], [forged]), // refused after its key was read and unwrapped
      encItem(d.deviceId),
      encItem(d.deviceId), // the pool had one downlink key
      decItem(d, [2]),
    ]);
    expect(results.map((r) => (r.keys ? 'ok' : r.error!.code))).toEqual([
      'ok',
      'KMS_ERR_KEY_UNAVAILABLE',
      'ok',
      'KMS_ERR_POOL_EMPTY',
      'ok',
    ]);
    expect((await stateOf(d, 1)).state).toBe('filled');
    const { entries } = await t.admin.audit({ device_id: d.deviceId });
    const claimed = entries
      .filter((e) => e.action.startsWith('key.claim.'))
      .map((e) => (e.detail as { key_IDs: string[] }).key_IDs);
    expect(claimed).toEqual([[keyIdFor(d.deviceId, 0)], [keyIdFor(d.deviceId, 3)], [keyIdFor(d.deviceId, 2)]]);
  });

  it('delivers a key named twice in one request once; the second item is refused as claimed', async () => {
    const d = await provisionDevice(t.admin, 'bulk-dup', 2, 0);
    const { results } = await claims(broker, [decItem(d, [0]), decItem(d, [0]), encItem('bulk-dup', 1)]);
    expect(results[0]!.keys).toHaveLength(1);
    expect(results[1]!.error).toMatchObject({ code: 'KMS_ERR_KEY_UNAVAILABLE' });
    expect(results[1]!.error!.details).toEqual([{ key_ID: keyIdFor(d.deviceId, 0), reason: 'claimed' }]);
    expect(results[2]!.error).toMatchObject({ code: 'KMS_ERR_POOL_EMPTY' });
  });

  it('refuses a replayed proof: its key is claimed (by whichever broker) or superseded', async () => {
    const d = await provisionDevice(t.admin, 'bulk-replay', 4, 0);
    const proof0 = uplinkProof(d, 0);
    expect((await claims(broker, [decItem(d, [0], [proof0])])).results[0]!.keys).toHaveLength(1);
    expect((await claims(broker, [decItem(d, [1])])).results[0]!.keys).toHaveLength(1);
    // The same envelope again, by this broker and by another: claimed; key 0's envelope for key 2: proof_failed.
    const again = await claims(other, [decItem(d, [0], [proof0]), decItem(d, [2], [proof0])]);
    expect(again.results[0]!.error!.details).toEqual([{ key_ID: keyIdFor(d.deviceId, 0), reason: 'claimed' }]);
    expect(again.results[1]!.error!.details).toEqual([{ key_ID: keyIdFor(d.deviceId, 2), reason: 'proof_failed' }]);
    expect((await stateOf(d, 2)).state).toBe('filled');
  });

  it('answers a proof that is not canonical base64 in its item alone', async () => {
    const d = await provisionDevice(t.admin, 'bulk-b64', 2, 0);
    const e = await provisionDevice(t.admin, 'bulk-b64-ok', 2, 0);
    const item = decItem(d, [0]);
    const proof = item.dec_keys.key_IDs[0]!.key_ID_extension!.qkey_proof!;
    proof.envelope = `${proof.envelope.slice(0, 4)}\n${proof.envelope.slice(4)}`; // a line break
    const { results } = await claims(broker, [item, decItem(e, [0])]);
    expect(results[0]!.error!.details).toEqual([{ key_ID: keyIdFor(d.deviceId, 0), reason: 'proof_encoding' }]);
    expect(results[1]!.keys).toHaveLength(1);
    expect((await stateOf(d, 0)).state).toBe('filled');
  });

  it('refuses a malformed request as a whole, claiming nothing', async () => {
    const d = await provisionDevice(t.admin, 'bulk-malformed', 2, 2);
    const malformed: unknown[][] = [
      [{ SAE_ID: d.deviceId, enc_keys: {}, dec_keys: decItem(d, [0]).dec_keys }], // both kinds in one item
      [{ SAE_ID: d.deviceId }], // neither
      [{ enc_keys: {} }], // no SAE_ID
      [{ SAE_ID: '../admin', enc_keys: {} }], // not an id
      [{ SAE_ID: d.deviceId, enc_keys: {}, extra: 1 }],
      [encItem(d.deviceId), 'not an object'],
      [], // empty
    ];
    for (const items of malformed) {
      const err = await refusal(claims(broker, items));
      expect(err.status).toBe(400);
      expect(err.code).toBe('KMS_ERR_BAD_REQUEST');
    }
    const { keys } = await t.admin.deviceKeys(d.deviceId);
    expect(keys.every((k) => k.state === 'filled')).toBe(true);
  });

  it(`refuses more than ${MAX_BULK_ITEMS} items and bodies above ${BULK_BODY_LIMIT} bytes`, async () => {
    const d = await provisionDevice(t.admin, 'bulk-big', 1, 1);
    const tooMany = await refusal(
      claims(
        broker,
        Array.from({ length: MAX_BULK_ITEMS + 1 }, () => encItem(d.deviceId)),
      ),
    );
    expect(tooMany.code).toBe('KMS_ERR_BAD_REQUEST');
    const big = decItem(d, [0]);
    big.dec_keys.key_IDs[0]!.key_ID_extension!.qkey_proof!.topic = 'x'.repeat(60_000);
    const tooLarge = await refusal(
      claims(
        broker,
        Array.from({ length: 20 }, () => big),
      ),
    );
    expect(tooLarge.status).toBe(413);
    expect((await t.admin.deviceKeys(d.deviceId)).keys.every((k) => k.state === 'filled')).toBe(true);
  });

  it('is the broker group’s: no credential, an admin token and a device token are refused', async () => {
    const d = await provisionDevice(t.admin, 'bulk-creds', 1, 1);
    for (const client of [t.anon, t.admin]) {
      expect((await refusal(claims(client, [encItem(d.deviceId)]))).status).toBe(401);
      expect(
        (await refusal(retirements(client, [{ SAE_ID: d.deviceId, key_IDs: [{ key_ID: keyIdFor(d.deviceId, 1) }] }])))
          .status,
      ).toBe(401);
    }
    expect((await t.admin.deviceKeys(d.deviceId)).keys.every((k) => k.state === 'filled')).toBe(true);
  });
});

describe('bulk retirements', () => {
  it('retires only the caller’s claimed keys, each item on its own, duplicates counted once', async () => {
    const a = await provisionDevice(t.admin, 'bulk-ret-a', 1, 2);
    const b = await provisionDevice(t.admin, 'bulk-ret-b', 1, 2);
    const mine = (await claims(broker, [encItem(a.deviceId), encItem(b.deviceId)])).results.map((r) => r.keys![0]!);
    const theirs = (await claims(other, [encItem(b.deviceId)])).results[0]!.keys![0]!;
    const { results } = await retirements(broker, [
      { SAE_ID: a.deviceId, key_IDs: [{ key_ID: mine[0]!.key_ID }] },
      { SAE_ID: 'bulk-ret-nobody', key_IDs: [{ key_ID: mine[1]!.key_ID }] },
      { SAE_ID: b.deviceId, key_IDs: [{ key_ID: theirs.key_ID }] }, // another broker's key
      { SAE_ID: a.deviceId, key_IDs: [{ key_ID: mine[1]!.key_ID }] }, // b's key under a's SAE_ID
      { SAE_ID: b.deviceId, key_IDs: [{ key_ID: mine[1]!.key_ID }] },
      { SAE_ID: b.deviceId, key_IDs: [{ key_ID: mine[1]!.key_ID }] }, // duplicate
    ]);
    expect(results).toEqual([
      { retired: 1 },
      { error: expect.objectContaining({ status: 400, code: 'KMS_ERR_UNKNOWN_DEVICE' }) },
      { retired: 0 },
      { retired: 0 },
      { retired: 1 },
      { retired: 0 },
    ]);
    expect((await stateOf(b, theirs.key_ID_extension.qkey_key_index)).state).toBe('claimed');
    expect((await stateOf(a, 1)).state).toBe('retired');
  });

  it('refuses a malformed or oversized request as a whole, retiring nothing', async () => {
    const d = await provisionDevice(t.admin, 'bulk-ret-bad', 1, 1);
    const key = (await broker.encKeys(d.deviceId, 1)).keys[0]!;
    const item = { SAE_ID: d.deviceId, key_IDs: [{ key_ID: key.key_ID }] };
    for (const items of [
      [item, { SAE_ID: d.deviceId, key_IDs: [] }],
      [item, { SAE_ID: d.deviceId }],
      [item, { key_IDs: item.key_IDs }],
      Array.from({ length: MAX_BULK_ITEMS + 1 }, () => item),
    ])
      expect((await refusal(retirements(broker, items))).code).toBe('KMS_ERR_BAD_REQUEST');
    expect((await stateOf(d, 1)).state).toBe('claimed');
  });
});
