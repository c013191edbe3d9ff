// POST /api/v1/bulk/abandons: what a broker may retire without holding a key, and what it may not.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsClient } from '../../kms-api/client.js';
import { keyIdFor } from '../../protocol/index.js';
import {
  brokerClient,
  claimUplink,
  proofFor,
  provisionDevice,
  removeDir,
  startTestKms,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

let t: TestKms;
let b1: KmsClient;
let b2: KmsClient;
beforeAll(async () => {
  t = await startTestKms();
  b1 = await brokerClient(t, 'abandon-b1');
  b2 = await brokerClient(t, 'abandon-b2');
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

const stateOf = async (deviceId: string, index: number) =>
  (await t.admin.deviceKeys(deviceId)).keys.find((k) => k.key_index === index)?.state;

const proofJson = (p: ReturnType<typeof uplinkProof>) => ({
  envelope: Buffer.from(p.envelope).toString('base64'),
  topic: p.topic,
  direction: p.direction,
});

describe('abandoned claims', () => {
  it('a filled uplink key is retired unclaimed only with a proof of use that opens under it', async () => {
    const dev = await provisionDevice(t.admin, 'ab-1', 3, 0);
    const other = await provisionDevice(t.admin, 'ab-1-other', 1, 0);
    const id = (i: number) => keyIdFor(dev.deviceId, i);
    // No proof, a proof naming another index, a proof sealed under another device's key: nothing changes.
    const refused = await b1.bulkAbandon([
      { SAE_ID: dev.deviceId, key_IDs: [{ key_ID: id(0) }] },
      { SAE_ID: dev.deviceId, key_IDs: [{ key_ID: id(0), qkey_proof: proofJson(uplinkProof(dev, 1)) }] },
      {
        SAE_ID: dev.deviceId,
        key_IDs: [{ key_ID: id(0), qkey_proof: proofJson(proofFor(dev.deviceId, 0, other.keys.get(0)!.key)) }],
      },
      // Another device's key, named under this device with its own valid proof.
      {
        SAE_ID: dev.deviceId,
        key_IDs: [{ key_ID: keyIdFor(other.deviceId, 0), qkey_proof: proofJson(uplinkProof(other, 0)) }],
      },
    ]);
    expect(refused.results).toEqual([{ retired: 0 }, { retired: 0 }, { retired: 0 }, { retired: 0 }]);
    expect(await stateOf(dev.deviceId, 0)).toBe('filled');
    expect(await stateOf(other.deviceId, 0)).toBe('filled');
    // With its proof: retired, no key delivered, and a claim of it is refused afterwards.
    const ok = await b1.bulkAbandon([
      { SAE_ID: dev.deviceId, key_IDs: [{ key_ID: id(0), qkey_proof: proofJson(uplinkProof(dev, 0)) }] },
    ]);
    expect(ok.results).toEqual([{ retired: 1 }]);
    expect(JSON.stringify(ok)).not.toContain('"key"');
    expect(await stateOf(dev.deviceId, 0)).toBe('retired');
    await expect(claimUplink(b2, dev, 0)).rejects.toMatchObject({ details: [{ reason: 'retired' }] });
  });

  it("another broker's claimed key is left alone; the claimer's own is retired", async () => {
    const dev = await provisionDevice(t.admin, 'ab-2', 2, 0);
    await claimUplink(b1, dev, 0);
    const item = {
      SAE_ID: dev.deviceId,
      key_IDs: [{ key_ID: keyIdFor(dev.deviceId, 0), qkey_proof: proofJson(uplinkProof(dev, 0)) }],
    };
    expect((await b2.bulkAbandon([item])).results).toEqual([{ retired: 0 }]);
    expect(await stateOf(dev.deviceId, 0)).toBe('claimed');
    expect((await b1.bulkAbandon([item])).results).toEqual([{ retired: 1 }]);
    expect(await stateOf(dev.deviceId, 0)).toBe('retired');
  });

  it("a session's downlink keys: only the calling broker's, of that session, of that device", async () => {
    const dev = await provisionDevice(t.admin, 'ab-3', 1, 4);
    await b1.encKeys(dev.deviceId, 1, 'sess-a');
    await b1.encKeys(dev.deviceId, 1, 'sess-b');
    await b2.encKeys(dev.deviceId, 1, 'sess-a');
    expect((await b2.bulkAbandon([{ SAE_ID: 'ab-1', downlink_session_id: 'sess-a' }])).results).toEqual([
      { retired: 0 },
    ]);
    expect((await b1.bulkAbandon([{ SAE_ID: dev.deviceId, downlink_session_id: 'sess-a' }])).results).toEqual([
      { retired: 1 },
    ]);
    const states = (await t.admin.deviceKeys(dev.deviceId)).keys.map((k) => [k.key_index, k.state, k.claimed_by]);
    expect(states).toEqual([
      [0, 'filled', null],
      [1, 'retired', 'abandon-b1'],
      [2, 'claimed', 'abandon-b1'],
      [3, 'claimed', 'abandon-b2'],
      [4, 'filled', null],
    ]);
  });

  it('a key whose proof is on an end-to-end topic is left alone: no broker may retire what it may not claim', async () => {
    const dev = await provisionDevice(t.admin, 'ab-5', 1, 0);
    const topic = `devices/${dev.deviceId}/up/vault/t`;
    await t.admin.setPolicy('ab-5-vault', {
      principal: dev.deviceId,
      role: 'device',
      filter: `devices/${dev.deviceId}/up/vault/#`,
      encryption: 'end-to-end',
      app: 'ab-5-app',
    });
    const item = {
      SAE_ID: dev.deviceId,
      key_IDs: [{ key_ID: keyIdFor(dev.deviceId, 0), qkey_proof: proofJson(uplinkProof(dev, 0, { topic })) }],
    };
    // A broker holds the device's end-to-end envelope (it forwards it), and its proof opens: still nothing changes.
    expect((await b1.bulkAbandon([item])).results).toEqual([{ retired: 0 }]);
    expect(await stateOf(dev.deviceId, 0)).toBe('filled');
  });

  it('an unknown device is that item’s error alone; a malformed body is refused whole', async () => {
    const dev = await provisionDevice(t.admin, 'ab-4', 1, 1);
    await b1.encKeys(dev.deviceId, 1, 's');
    const r = await b1.bulkAbandon([
      { SAE_ID: 'no-such-device', downlink_session_id: 's' },
      { SAE_ID: dev.deviceId, downlink_session_id: 's' },
    ]);
    expect(r.results[0]).toMatchObject({ error: { status: 400, code: 'KMS_ERR_UNKNOWN_DEVICE' } });
    expect(r.results[1]).toEqual({ retired: 1 });
    // Neither key ids nor a session: nothing to abandon.
    await expect(
      b1.request('POST', '/api/v1/bulk/abandons', { abandons: [{ SAE_ID: dev.deviceId }] }),
    ).rejects.toMatchObject({
      status: 400,
    });
    await expect(t.anon.bulkAbandon([{ SAE_ID: dev.deviceId, downlink_session_id: 's' }])).rejects.toMatchObject({
      status: 401,
    });
  });
});
