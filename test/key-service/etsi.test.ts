// ETSI GS QKD 014 key delivery: field names, at-most-once claims, races, errors (400/401/503) and group commit.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsHttpError, type KmsClient } from '../../kms-api/client.js';
import { keyIdFor } from '../../protocol/index.js';
import {
  brokerClient,
  claimUplink,
  type ProvisionedDevice,
  provisionDevice,
  removeDir,
  startTestKms,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;
let dev: ProvisionedDevice;

beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t);
  dev = await provisionDevice(t.admin, 'dev-etsi', 6, 6);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

async function httpError(p: Promise<unknown>): Promise<KmsHttpError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(KmsHttpError);
  return err as KmsHttpError;
}

describe('status', () => {
  it('reports the ETSI fields and pool levels', async () => {
    const s = await broker.status('dev-etsi');
    expect(s).toMatchObject({
      source_KME_ID: 'qkey-kms',
      master_SAE_ID: 'broker-1',
      slave_SAE_ID: 'dev-etsi',
      key_size: 128,
      stored_key_count: 6,
      max_key_per_request: 16,
      max_key_size: 128,
      min_key_size: 128,
      max_SAE_ID_count: 0,
      status_extension: { qkey_uplink_available: 6, qkey_downlink_available: 6, qkey_next_uplink_key_index: 0 },
    });
  });
});

describe('dec_keys (uplink)', () => {
  it('delivers the named key once, with UUID key_ID and base64 key, and never again', async () => {
    const keyId = keyIdFor('dev-etsi', 0);
    const r = await claimUplink(broker, dev, 0, 'session-a');
    expect(r.keys).toEqual([
      { key_ID: keyId, key: dev.keys.get(0)!.key.toString('base64'), key_ID_extension: { qkey_key_index: 0 } },
    ]);
    const again = await httpError(claimUplink(broker, dev, 0, 'session-b'));
    expect(again.status).toBe(400);
    expect(again.code).toBe('KMS_ERR_KEY_UNAVAILABLE');
    expect(again.details).toEqual([{ key_ID: keyId, reason: 'claimed' }]);
  });

  it('is all or nothing: one unavailable key refuses the request and claims none of the others', async () => {
    const ok = keyIdFor('dev-etsi', 1);
    const downlink = keyIdFor('dev-etsi', 7);
    // The downlink key's proof is sealed under it: it is refused for what it is, not for a missing proof.
    const e = await httpError(claimUplink(broker, dev, [1, 7]));
    expect(e.details).toEqual([{ key_ID: downlink, reason: 'not an uplink key' }]);
    expect((await broker.decKeys('dev-etsi', [ok], undefined, [uplinkProof(dev, 1)])).keys).toHaveLength(1);
  });

  it('two brokers racing for the same keys: exactly one wins each key', async () => {
    const other = await brokerClient(t, 'broker-2');
    const ids = [2, 3, 4, 5].map((i) => keyIdFor('dev-etsi', i));
    const results = await Promise.allSettled(
      [2, 3, 4, 5].flatMap((i) => [claimUplink(broker, dev, i), claimUplink(other, dev, i)]),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(ids.length);
    const delivered = won.map(
      (r) => (r as PromiseFulfilledResult<{ keys: Array<{ key_ID: string }> }>).value.keys[0]!.key_ID,
    );
    expect(new Set(delivered)).toEqual(new Set(ids));
    for (const r of results.filter((x) => x.status === 'rejected')) {
      expect(((r as PromiseRejectedResult).reason as KmsHttpError).code).toBe('KMS_ERR_KEY_UNAVAILABLE');
    }
  });
});

describe('enc_keys (downlink)', () => {
  it('claims the next fresh downlink keys in index order, then 503 when the pool is empty', async () => {
    const first = await broker.encKeys('dev-etsi', 2, 'session-c');
    expect(first.keys.map((k) => k.key_ID_extension?.qkey_key_index)).toEqual([6, 7]);
    expect(first.keys[0]!.key).toBe(dev.keys.get(6)!.key.toString('base64'));
    await broker.encKeys('dev-etsi', 4);
    const empty = await httpError(broker.encKeys('dev-etsi', 1));
    expect(empty.status).toBe(503);
    expect(empty.code).toBe('KMS_ERR_POOL_EMPTY');
    const keys = (await t.admin.deviceKeys('dev-etsi')).keys;
    expect(keys.find((k) => k.key_index === 6)).toMatchObject({
      state: 'claimed',
      claimed_by: 'broker-1',
      claimed_session: 'session-c',
    });
  });

  it('the GET variant of enc_keys works as the spec allows (GET dec_keys: proof-of-use.test.ts)', async () => {
    await provisionDevice(t.admin, 'dev-get', 1, 1);
    const e = await broker.request<{ keys: unknown[] }>('GET', '/api/v1/keys/dev-get/enc_keys?number=1&size=128');
    expect(e.keys).toHaveLength(1);
  });
});

describe('errors', () => {
  it('401 without a token, with a device or app token, or a garbled one; nothing changes', async () => {
    await provisionDevice(t.admin, 'dev-auth', 1, 1);
    const { client_secret } = await t.admin.registerApp('app-1');
    const app = t.anon.withToken((await t.anon.clientToken('app-1', client_secret)).access_token);
    for (const c of [t.anon, app, t.anon.withToken('qk1.garbage.sig'), t.admin]) {
      const e = await httpError(c.encKeys('dev-auth', 1));
      expect(e.status).toBe(401);
      expect(e.code).toBe('KMS_ERR_UNAUTHORIZED');
    }
    expect((await broker.status('dev-auth')).stored_key_count).toBe(1);
  });

  it('400 for unknown devices, bad sizes, too many keys, bad bodies and unsupported mandatory extensions', async () => {
    const cases: Array<[() => Promise<unknown>, string]> = [
      [() => broker.encKeys('no-such-device', 1), 'KMS_ERR_UNKNOWN_DEVICE'],
      [() => broker.request('POST', '/api/v1/keys/dev-auth/enc_keys', { number: 1, size: 256 }), 'KMS_ERR_KEY_SIZE'],
      [() => broker.request('POST', '/api/v1/keys/dev-auth/enc_keys', { number: 17 }), 'KMS_ERR_TOO_MANY_KEYS'],
      [() => broker.request('POST', '/api/v1/keys/dev-auth/enc_keys', { number: 'x' }), 'KMS_ERR_BAD_REQUEST'],
      [
        () =>
          broker.request('POST', '/api/v1/keys/dev-auth/enc_keys', {
            number: 1,
            extension_mandatory: [{ frobnicate: true }],
          }),
        'KMS_ERR_EXTENSION',
      ],
      [
        () => broker.request('POST', '/api/v1/keys/dev-auth/enc_keys', { additional_slave_SAE_IDs: ['x'] }),
        'KMS_ERR_BAD_REQUEST',
      ],
      [
        () => broker.request('POST', '/api/v1/keys/dev-auth/dec_keys', { key_IDs: [{ key_ID: 'not-a-uuid' }] }),
        'KMS_ERR_BAD_REQUEST',
      ],
      [() => broker.request('POST', '/api/v1/keys/dev-auth/dec_keys', {}), 'KMS_ERR_BAD_REQUEST'],
      [
        () => broker.request('POST', '/api/v1/keys/bad%20id/dec_keys', { key_IDs: [{ key_ID: keyIdFor('x', 1) }] }),
        'KMS_ERR_BAD_REQUEST',
      ],
    ];
    for (const [p, code] of cases) {
      const e = await httpError(p());
      expect(e.status, code).toBe(400);
      expect(e.code).toBe(code);
      expect(e.message.length).toBeGreaterThan(0);
    }
    expect((await broker.status('dev-auth')).stored_key_count).toBe(1);
  });

  it('rejects an unparsable JSON body and an oversize body with clear codes', async () => {
    const brokerToken = (
      await t.anon.clientToken('broker-json', (await t.admin.registerBroker('broker-json')).client_secret)
    ).access_token;
    const post = (authorization: string) =>
      fetch(`${t.url}/api/v1/keys/dev-auth/enc_keys`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization },
        body: '{"number":',
      });
    const res = await post(`Bearer ${brokerToken}`);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { code: string }).code).toBe('KMS_ERR_BAD_REQUEST');
    // Credentials are checked before the body is read: an outsider learns nothing about what a body should be.
    const outsider = await post('Bearer x');
    expect(outsider.status).toBe(401);
    expect(((await outsider.json()) as { code: string }).code).toBe('KMS_ERR_UNAUTHORIZED');
    const big = await fetch(`${t.url}/api/v1/auth/challenge`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ device_id: 'x'.repeat(2 * 1024 * 1024) }),
    });
    expect(big.status).toBe(413);
    expect(((await big.json()) as { code: string }).code).toBe('KMS_ERR_TOO_LARGE');
  });
});

describe('group commit', () => {
  it('commits concurrent claims in shared transactions', async () => {
    await provisionDevice(t.admin, 'dev-gc', 0, 64);
    const scrape = async () => (await fetch(`${t.url}/metrics`)).text();
    const value = (text: string, name: string) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
    const before = await scrape();
    await Promise.all(Array.from({ length: 64 }, () => broker.encKeys('dev-gc', 1)));
    const after = await scrape();
    const requests = value(after, 'kms_claim_batch_size_sum') - value(before, 'kms_claim_batch_size_sum');
    const batches = value(after, 'kms_claim_batch_size_count') - value(before, 'kms_claim_batch_size_count');
    expect(requests).toBe(64);
    expect(batches).toBeLessThan(64);
    expect(new Set((await t.admin.deviceKeys('dev-gc')).keys.map((k) => k.state))).toEqual(new Set(['claimed']));
  });
});
