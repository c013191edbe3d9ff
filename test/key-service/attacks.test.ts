// An outsider's attacks on the key service that are not about one route's spelling or login limits: a revoked
// broker still claiming, hostile bodies, request targets and headers, and what its answers and logs carry.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HEADERS_TIMEOUT_MS, REQUEST_TIMEOUT_MS } from '../../key-service/app.js';
import { createKmsMetrics, POOL_CENSUS_INTERVAL_MS } from '../../key-service/metrics.js';
import { loadAdminToken } from '../../key-service/secrets.js';
import { issueToken } from '../../key-service/context.js';
import { rotateMasterKey } from '../../key-service/master-key.js';
import { readSecretFile } from '../../common/secret-file.js';
import { KmsHttpError, type KmsClient } from '../../kms-api/client.js';
import { keyIdFor } from '../../protocol/index.js';
import {
  brokerClient,
  claimUplink,
  provisionDevice,
  removeDir,
  startTestKms,
  tempDir,
  type TestKms,
  uplinkProof,
} from '../helpers/kms.js';

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
    const dev = await provisionDevice(t.admin, 'dev-rb', 4, 4);
    const broker: KmsClient = await brokerClient(t, 'broker-rb');
    // The broker is busy: its token and its active state were just checked.
    expect((await broker.encKeys('dev-rb', 1)).keys).toHaveLength(1);
    await t.admin.revokeClient('broker', 'broker-rb');
    expect(await outcome(broker.encKeys('dev-rb', 1))).toBe('401 KMS_ERR_UNAUTHORIZED');
    expect(await outcome(claimUplink(broker, dev, 0))).toBe('401 KMS_ERR_UNAUTHORIZED');
    // Nothing was claimed for it after the revocation.
    const keys = await t.admin.request<{ keys: Array<{ state: string }> }>('GET', '/api/v1/admin/devices/dev-rb/keys');
    expect(keys.keys.filter((k) => k.state === 'claimed')).toHaveLength(1);
  });
});

describe('an outsider scraping /metrics', () => {
  it('as fast as it can does not make the key service count its key table once per scrape', async () => {
    await provisionDevice(t.admin, 'dev-scrape', 2, 3);
    const store = t.kms.context.store;
    const keyCounts = vi.spyOn(store, 'keyCounts');
    const allPools = vi.spyOn(store, 'allPools');
    try {
      const scrapes = await Promise.all(
        Array.from({ length: 20 }, () => fetch(`${t.url}/metrics`).then((r) => r.text())),
      );
      for (const text of scrapes) expect(text).toMatch(/^kms_keys\{direction="down",state="filled"\} \d+$/m);
      // Each recount reads every key row on the event loop; 20 anonymous scrapes get at most one.
      expect(keyCounts.mock.calls.length).toBeLessThanOrEqual(1);
      expect(allPools.mock.calls.length).toBeLessThanOrEqual(1);
    } finally {
      keyCounts.mockRestore();
      allPools.mockRestore();
    }
  });

  it('still sees the pools change once the census interval has passed', async () => {
    const store = t.kms.context.store;
    let clock = 0;
    const metrics = createKmsMetrics(store, 16, () => clock);
    const filledDown = async () =>
      Number(/^kms_keys\{direction="down",state="filled"\} (\d+)$/m.exec(await metrics.registry.metrics())?.[1] ?? 0);
    const before = await filledDown();
    await provisionDevice(t.admin, 'dev-census', 1, 2);
    expect(await filledDown()).toBe(before);
    clock += POOL_CENSUS_INTERVAL_MS;
    expect(await filledDown()).toBe(before + 2);
  });
});

describe('a secret file others can read', () => {
  it('is refused, not used: an admin token restored or copied with mode 0644 does not open the admin API', () => {
    const dir = tempDir();
    try {
      const token = loadAdminToken(dir);
      expect(loadAdminToken(dir)).toBe(token);
      for (const mode of [0o644, 0o640, 0o604]) {
        chmodSync(join(dir, 'admin-token'), mode);
        expect(() => loadAdminToken(dir), mode.toString(8)).toThrow(/admin-token must be readable by its owner only/);
        expect(() => readSecretFile(join(dir, 'admin-token'))).toThrow(/chmod 600/);
      }
    } finally {
      removeDir(dir);
    }
  });

  it('an empty admin-token file is refused with advice, not a crash on creating it again', () => {
    const dir = tempDir();
    try {
      writeFileSync(join(dir, 'admin-token'), '', { mode: 0o600 });
      expect(() => loadAdminToken(dir)).toThrow(/admin-token is empty; delete it/);
    } finally {
      removeDir(dir);
    }
  });
});

describe('large bodies from anyone', () => {
  it('are refused unread on the public routes (413), where a legitimate body is a few hundred bytes', async () => {
    const padded = (body: object) => JSON.stringify({ ...body, pad: 'A'.repeat(64 * 1024) });
    for (const [path, body] of [
      ['/api/v1/auth/challenge', { device_id: 'dev-big' }],
      ['/api/v1/auth/token', { grant_type: 'client_credentials', client_id: 'app-big', client_secret: 'x' }],
    ] as const) {
      const r = await fetch(`${t.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: padded(body),
      });
      expect(r.status, path).toBe(413);
      expect(((await r.json()) as { code: string }).code).toBe('KMS_ERR_TOO_LARGE');
    }
    // A real login body still fits.
    expect((await t.anon.challenge('dev-big')).challenge).toHaveLength(44);
  });
});

describe('a broker reaching for keys that are not its to take', () => {
  it('presents a token another key service issued for a broker id registered here: 401, nothing claimed', async () => {
    await provisionDevice(t.admin, 'dev-foreign', 1, 1);
    await t.admin.registerBroker('broker-twin');
    const other = await startTestKms();
    try {
      await other.admin.registerBroker('broker-twin');
      const foreign = issueToken(other.kms.context, 'broker', 'broker-twin').token;
      expect(await outcome(t.anon.withToken(foreign).encKeys('dev-foreign', 1))).toBe('401 KMS_ERR_UNAUTHORIZED');
    } finally {
      await other.stop();
      removeDir(other.dataDir);
    }
    expect((await (await brokerClient(t, 'broker-foreign-check')).status('dev-foreign')).stored_key_count).toBe(1);
  });

  it("names another device's uplink key under its own SAE id: refused, and that key stays claimable by its device", async () => {
    await provisionDevice(t.admin, 'dev-own', 2, 1);
    const other = await provisionDevice(t.admin, 'dev-other', 2, 1);
    const broker = await brokerClient(t, 'broker-cross');
    const foreign = keyIdFor('dev-other', 0);
    // With the other device's own valid proof of use: the key id decides the device, the proof does not.
    const e = await broker.decKeys('dev-own', [foreign], undefined, [uplinkProof(other, 0)]).then(
      () => undefined,
      (err: KmsHttpError) => err,
    );
    expect(e?.code).toBe('KMS_ERR_KEY_UNAVAILABLE');
    expect(e?.details).toEqual([{ key_ID: foreign, reason: 'unknown' }]);
    expect((await claimUplink(broker, other, 0)).keys[0]!.key_ID).toBe(foreign);
  });

  it("retires another broker's claimed key: nothing changes for the broker that holds it", async () => {
    const dev = await provisionDevice(t.admin, 'dev-retire', 1, 1);
    const holder = await brokerClient(t, 'broker-holder');
    const thief = await brokerClient(t, 'broker-thief');
    const id = keyIdFor('dev-retire', 0);
    await claimUplink(holder, dev, 0);
    expect(await thief.request('POST', '/api/v1/keys/dev-retire/retire', { key_IDs: [{ key_ID: id }] })).toEqual({
      retired: 0,
    });
    const keys = await t.admin.request<{ keys: Array<{ key_ID: string; state: string; claimed_by: string }> }>(
      'GET',
      '/api/v1/admin/devices/dev-retire/keys',
    );
    expect(keys.keys.find((k) => k.key_ID === id)).toMatchObject({ state: 'claimed', claimed_by: 'broker-holder' });
  });

  it('asks for a device whose id differs from another only in case: each keeps its own keys', async () => {
    await provisionDevice(t.admin, 'Dev-Case', 1, 1);
    await provisionDevice(t.admin, 'dev-case', 1, 1);
    const broker = await brokerClient(t, 'broker-case');
    expect((await broker.encKeys('Dev-Case', 1)).keys[0]!.key_ID).toBe(keyIdFor('Dev-Case', 1));
    expect((await broker.status('dev-case')).stored_key_count).toBe(1);
    expect(await outcome(broker.encKeys('Dev-Case', 1))).toBe('503 KMS_ERR_POOL_EMPTY');
  });
});

describe('connections that never finish their request', () => {
  it('are bounded in time: headers within 10 s, the whole request within 30 s', () => {
    const server = t.kms.app.server;
    // Node's defaults under fastify are no request limit and no socket timeout: a stalled body held forever.
    expect(server.requestTimeout).toBe(REQUEST_TIMEOUT_MS);
    expect(server.headersTimeout).toBe(HEADERS_TIMEOUT_MS);
    expect(REQUEST_TIMEOUT_MS).toBeGreaterThan(0);
    expect(HEADERS_TIMEOUT_MS).toBeGreaterThan(0);
    expect(HEADERS_TIMEOUT_MS).toBeLessThanOrEqual(REQUEST_TIMEOUT_MS);
  });
});

describe('hostile input', () => {
  it('a session id of any size in enc_keys extensions is bounded as in dec_keys (it is stored with every key)', async () => {
    await provisionDevice(t.admin, 'dev-session', 1, 2);
    const broker = await brokerClient(t, 'broker-session');
    for (const ext of ['extension_mandatory', 'extension_optional']) {
      const body = { number: 1, [ext]: [{ qkey_session_id: 'x'.repeat(129) }] };
      expect(await outcome(broker.request('POST', '/api/v1/keys/dev-session/enc_keys', body)), ext).toBe(
        '400 KMS_ERR_BAD_REQUEST',
      );
    }
    const ok = { number: 1, extension_mandatory: [{ qkey_session_id: 's'.repeat(128) }] };
    expect(await outcome(broker.request('POST', '/api/v1/keys/dev-session/enc_keys', ok))).toBe('OK');
    expect((await broker.status('dev-session')).stored_key_count).toBe(1);
  });

  it('a body nested 100,000 levels deep gets 400, and the service keeps answering', async () => {
    const depth = 100_000;
    const r = await fetch(`${t.url}/api/v1/admin/devices`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer test-admin-token' },
      body: `{"device_id":${'['.repeat(depth)}${']'.repeat(depth)}}`,
    });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { code: string }).code).toBe('KMS_ERR_BAD_REQUEST');
    expect((await fetch(`${t.url}/healthz`)).status).toBe(200);
  });
});

describe('a data folder holding a master key newer than its database', () => {
  it('starts without deleting that key (an older kms.db restored by mistake must not destroy the newer one)', async () => {
    let kms = await startTestKms();
    const dir = kms.dataDir;
    try {
      await kms.stop();
      // The master key of a newer copy of this database (rotated once), set aside while an older kms.db is back.
      const newer = join(dir, 'master-key.v2');
      writeFileSync(newer, `${'ab'.repeat(16)}\n`, { mode: 0o600 });
      kms = await startTestKms({}, dir);
      expect(readFileSync(newer, 'utf8')).toBe(`${'ab'.repeat(16)}\n`);
      // A rotation from here takes a version above every key file, and overwrites none.
      const r = rotateMasterKey(kms.kms.context.store.db, dir);
      expect(r).toMatchObject({ from: 1, to: 3 });
      expect(readFileSync(newer, 'utf8')).toBe(`${'ab'.repeat(16)}\n`);
      expect(existsSync(join(dir, 'master-key.v1'))).toBe(false);
    } finally {
      await kms.stop();
      removeDir(dir);
    }
  });
});
