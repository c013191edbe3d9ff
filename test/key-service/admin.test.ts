// Admin API: devices, two-phase fill batches, revocation, pools, audit; and wrong credentials change nothing.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsClient, KmsHttpError } from '../../kms-api/client.js';
import { keyIdFor } from '../../protocol/index.js';
import {
  brokerClient,
  claimUplink,
  proofFor,
  provisionDevice,
  removeDir,
  startTestKms,
  type TestKms,
} from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;

beforeAll(async () => {
  t = await startTestKms({ lowWater: 3 });
  broker = await brokerClient(t);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

async function code(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'OK',
    (e: KmsHttpError) => `${e.status} ${e.code}`,
  );
}

const b64 = () => randomBytes(16).toString('base64');

describe('devices', () => {
  it('registers, shows, lists with paging, and refuses duplicates and bad ids', async () => {
    const d = await t.admin.registerDevice('dev-a', 'SN-0001');
    expect(d).toMatchObject({
      device_id: 'dev-a',
      serial: 'SN-0001',
      state: 'active',
      pool: { up: 0, down: 0 },
      next_key_index: 0,
      has_login_key: false,
    });
    expect(await code(t.admin.registerDevice('dev-a'))).toBe('409 KMS_ERR_CONFLICT');
    expect(await code(t.admin.registerDevice('bad id'))).toBe('400 KMS_ERR_BAD_REQUEST');
    for (const id of ['dev-b', 'dev-c']) await t.admin.registerDevice(id);
    const page = await t.admin.listDevices(undefined, 2);
    expect(page.devices.map((x) => x.device_id)).toEqual(['dev-a', 'dev-b']);
    expect((await t.admin.listDevices(page.next, 2)).devices.map((x) => x.device_id)).toEqual(['dev-c']);
    expect(await code(t.admin.device('nope'))).toBe('404 KMS_ERR_NOT_FOUND');
  });

  it('refuses requests without the admin token, with a broker token, or a wrong one', async () => {
    for (const c of [t.anon, broker, t.anon.withToken('wrong')]) {
      expect(await code(c.registerDevice('dev-x'))).toBe('401 KMS_ERR_UNAUTHORIZED');
      expect(await code(c.listDevices())).toBe('401 KMS_ERR_UNAUTHORIZED');
    }
    expect(await code(t.admin.device('dev-x'))).toBe('404 KMS_ERR_NOT_FOUND');
  });
});

describe('fill batches', () => {
  const batch = (id: string, from: number, n: number, login = true) => ({
    batch_id: id,
    ...(login ? { login_key: b64() } : {}),
    keys: Array.from({ length: n }, (_, i) => ({
      key_index: from + i,
      direction: (i % 2 ? 'down' : 'up') as 'up' | 'down',
      key: b64(),
    })),
  });

  it('pending keys cannot be claimed; commit makes them claimable and installs the login key', async () => {
    await t.admin.registerDevice('dev-fill');
    const b = batch('fill-1', 0, 4);
    expect(await t.admin.registerBatch('dev-fill', b)).toMatchObject({
      state: 'pending',
      up_count: 2,
      down_count: 2,
      has_login_key: true,
    });
    // A valid proof of use does not make a pending key claimable.
    const proof = proofFor('dev-fill', 0, Buffer.from(b.keys[0]!.key, 'base64'));
    const e = await broker
      .decKeys('dev-fill', [keyIdFor('dev-fill', 0)], undefined, [proof])
      .catch((x: KmsHttpError) => x);
    expect((e as KmsHttpError).details).toEqual([{ key_ID: keyIdFor('dev-fill', 0), reason: 'pending' }]);
    expect((await t.admin.device('dev-fill')).has_login_key).toBe(false);
    expect(await t.admin.commitBatch('dev-fill', 'fill-1')).toMatchObject({ state: 'committed' });
    expect(await t.admin.commitBatch('dev-fill', 'fill-1')).toMatchObject({ state: 'committed' });
    expect(await t.admin.device('dev-fill')).toMatchObject({
      has_login_key: true,
      pool: { up: 2, down: 2 },
      next_key_index: 4,
    });
    expect((await broker.decKeys('dev-fill', [keyIdFor('dev-fill', 0)], undefined, [proof])).keys[0]!.key).toBe(
      b.keys[0]!.key,
    );
  });

  it('is idempotent by batch id; other content under the same id, or a reused index, is a conflict', async () => {
    const b = batch('fill-2', 10, 2);
    expect(await t.admin.registerBatch('dev-fill', b)).toMatchObject({ state: 'pending' });
    expect(await t.admin.registerBatch('dev-fill', b)).toMatchObject({ state: 'pending', batch_id: 'fill-2' });
    expect(
      await code(t.admin.registerBatch('dev-fill', { ...b, keys: [{ ...b.keys[0]!, key: b64() }, b.keys[1]!] })),
    ).toBe('409 KMS_ERR_CONFLICT');
    expect(await code(t.admin.registerBatch('dev-fill', batch('fill-3', 11, 1)))).toBe('409 KMS_ERR_CONFLICT');
    expect(await t.admin.batch('dev-fill', 'fill-3').catch((x: KmsHttpError) => x.code)).toBe('KMS_ERR_NOT_FOUND');
  });

  it('cancel destroys a pending batch; a cancelled batch cannot be committed or reused', async () => {
    expect(await t.admin.cancelBatch('dev-fill', 'fill-2')).toMatchObject({ state: 'cancelled' });
    const keys = (await t.admin.deviceKeys('dev-fill')).keys.filter((k) => k.batch_id === 'fill-2');
    expect(keys.map((k) => k.state)).toEqual(['destroyed', 'destroyed']);
    expect(await code(t.admin.commitBatch('dev-fill', 'fill-2'))).toBe('409 KMS_ERR_CONFLICT');
    expect(await code(t.admin.registerBatch('dev-fill', batch('fill-2', 20, 1)))).toBe('409 KMS_ERR_CONFLICT');
    expect(await code(t.admin.cancelBatch('dev-fill', 'fill-1'))).toBe('409 KMS_ERR_CONFLICT');
  });

  it('rejects malformed batches: bad key encoding, duplicate indices, empty, unknown device, too many keys', async () => {
    expect(
      await code(
        t.admin.registerBatch('dev-fill', { batch_id: 'x1', keys: [{ key_index: 30, direction: 'up', key: 'short' }] }),
      ),
    ).toBe('400 KMS_ERR_BAD_REQUEST');
    const dup = { batch_id: 'x2', keys: [30, 30].map((i) => ({ key_index: i, direction: 'up' as const, key: b64() })) };
    expect(await code(t.admin.registerBatch('dev-fill', dup))).toBe('400 KMS_ERR_BAD_REQUEST');
    expect(await code(t.admin.registerBatch('dev-fill', { batch_id: 'x3', keys: [] }))).toBe('400 KMS_ERR_BAD_REQUEST');
    expect(await code(t.admin.registerBatch('ghost', batch('x4', 0, 1)))).toBe('400 KMS_ERR_UNKNOWN_DEVICE');
    expect(await code(t.admin.registerBatch('dev-fill', batch('x5', 100, 4097, false)))).toBe(
      '400 KMS_ERR_BAD_REQUEST',
    );
    // Destroyed keys keep their index: a key index is never handed out twice.
    expect((await t.admin.device('dev-fill')).next_key_index).toBe(12);
  });
});

describe('revocation', () => {
  it('destroys unused keys, cancels pending batches, keeps claimed records, and refuses further claims', async () => {
    const dev = await provisionDevice(t.admin, 'dev-rev', 3, 3);
    await claimUplink(broker, dev, 0);
    await t.admin.registerBatch('dev-rev', {
      batch_id: 'dev-rev-b2',
      keys: [{ key_index: 6, direction: 'up', key: b64() }],
    });
    const r = await t.admin.revokeDevice('dev-rev', 'lost in the field');
    expect(r).toEqual({ device_id: 'dev-rev', state: 'revoked', destroyed_keys: 6 });
    const states = (await t.admin.deviceKeys('dev-rev')).keys.map((k) => k.state);
    expect(states).toEqual(['claimed', 'destroyed', 'destroyed', 'destroyed', 'destroyed', 'destroyed', 'destroyed']);
    expect((await t.admin.batch('dev-rev', 'dev-rev-b2')).state).toBe('cancelled');
    expect(await code(broker.encKeys('dev-rev', 1))).toBe('400 KMS_ERR_DEVICE_REVOKED');
    // A proof of use made before the revocation opens nothing either.
    expect(await code(claimUplink(broker, dev, 1))).toBe('400 KMS_ERR_DEVICE_REVOKED');
    expect(await t.admin.device('dev-rev')).toMatchObject({
      state: 'revoked',
      revoke_reason: 'lost in the field',
      has_login_key: false,
    });
    expect((await t.admin.revokeDevice('dev-rev')).destroyed_keys).toBe(0);
  });
});

describe('pools and audit', () => {
  it('reports pool levels with a low-water flag', async () => {
    await provisionDevice(t.admin, 'dev-pool', 5, 2);
    const { low_water, pools } = await t.admin.pools();
    expect(low_water).toBe(3);
    expect(pools.find((p) => p.device_id === 'dev-pool')).toEqual({
      device_id: 'dev-pool',
      up: 5,
      down: 2,
      low: true,
      stale_pending: 0,
    });
    expect((await t.admin.pools(true)).pools.every((p) => p.low)).toBe(true);
  });

  it('records fills, claims and revocations with actor and time, and never key bytes', async () => {
    const dev = await provisionDevice(t.admin, 'dev-audit', 1, 1);
    await broker.encKeys('dev-audit', 1, 'sess-42');
    const { entries } = await t.admin.audit({ device_id: 'dev-audit' });
    expect(entries.map((e) => e.action)).toEqual([
      'device.register',
      'batch.register',
      'batch.commit',
      'key.claim.enc',
    ]);
    expect(entries[3]).toMatchObject({
      actor: 'broker-1',
      detail: { key_IDs: [keyIdFor('dev-audit', 1)], session: 'sess-42' },
    });
    expect(entries.every((e) => e.at > 0)).toBe(true);
    const text = JSON.stringify((await t.admin.audit({ limit: 1000 })).entries);
    for (const k of [dev.loginKey, ...[...dev.keys.values()].map((x) => x.key)]) {
      expect(text).not.toContain(k.toString('base64'));
      expect(text).not.toContain(k.toString('hex'));
    }
    expect((await t.admin.audit({ action: 'device.revoke' })).entries.length).toBeGreaterThan(0);
  });

  it('the audit log is append-only in the database itself', () => {
    const db = t.kms.context.store.db;
    expect(() => db.prepare('DELETE FROM audit').run()).toThrow(/append-only/);
    expect(() => db.prepare(`UPDATE audit SET actor = 'x'`).run()).toThrow(/append-only/);
  });
});

describe('half-done fills and chip suites', () => {
  it('lists pending batches, reports them stale after the bound, and forgets them once settled', async () => {
    const s = await startTestKms({ stalePendingSeconds: 1 });
    try {
      await s.admin.registerDevice('dev-half');
      const batch = (id: string, first: number) => ({
        batch_id: id,
        keys: [{ key_index: first, direction: 'up' as const, key: b64() }],
      });
      await s.admin.registerBatch('dev-half', batch('b-1', 0));
      await s.admin.commitBatch('dev-half', 'b-1');
      await s.admin.registerBatch('dev-half', batch('b-2', 1));
      expect((await s.admin.batches('dev-half', 'pending')).batches.map((b) => b.batch_id)).toEqual(['b-2']);
      expect((await s.admin.batches('dev-half')).batches.map((b) => b.batch_id)).toEqual(['b-1', 'b-2']);
      expect((await s.admin.device('dev-half')).pending_batches).toMatchObject([{ batch_id: 'b-2', stale: false }]);
      await new Promise((r) => setTimeout(r, 1100)); // older than the 1 s bound, whatever the machine's speed
      expect((await s.admin.device('dev-half')).pending_batches).toMatchObject([{ batch_id: 'b-2', stale: true }]);
      const pools = await s.admin.pools();
      expect(pools.stale_pending_seconds).toBe(1);
      expect(pools.pools.find((p) => p.device_id === 'dev-half')?.stale_pending).toBe(1);
      await s.admin.cancelBatch('dev-half', 'b-2');
      expect((await s.admin.device('dev-half')).pending_batches).toEqual([]);
      expect((await s.admin.pools()).pools.find((p) => p.device_id === 'dev-half')?.stale_pending).toBe(0);
      expect(await code(s.admin.batches('dev-none'))).toBe('404 KMS_ERR_NOT_FOUND');
    } finally {
      await s.stop();
      removeDir(s.dataDir);
    }
  });

  it('records the suites a fill declares when the batch is committed, and puts them in device tokens', async () => {
    await t.admin.registerDevice('dev-ctr');
    expect((await t.admin.device('dev-ctr')).suites).toBeNull();
    const keys = [{ key_index: 0, direction: 'up' as const, key: b64() }];
    await t.admin.registerBatch('dev-ctr', { batch_id: 'ctr-1', suites: [2], login_key: b64(), keys });
    expect((await t.admin.device('dev-ctr')).suites).toBeNull(); // pending: not yet the device's
    expect((await t.admin.commitBatch('dev-ctr', 'ctr-1')).suites).toEqual([2]);
    expect((await t.admin.device('dev-ctr')).suites).toEqual([2]);
    for (const bad of [[], [3], [1, 1], [1, 2, 1]]) {
      const body = { batch_id: 'ctr-bad', suites: bad, keys: [{ key_index: 9, direction: 'up' as const, key: b64() }] };
      // Out-of-type suites on purpose: the server must refuse what the client's types would not let through.
      expect(await code(t.admin.registerBatch('dev-ctr', body as never))).toBe('400 KMS_ERR_BAD_REQUEST');
    }
  });
});
