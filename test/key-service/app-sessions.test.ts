// Application sessions at the key service: SM2 key registration, the QRNG-filled app key pool, the challenge-response
// that yields a session key under SM2, the broker's one claim of it, and what an attacker tries at each step.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sm2KeyPair, type Sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { challengeMessage, signChallenge, unwrapSessionKey } from '../../protocol/index.js';
import { join } from 'node:path';
import { DB_FILE } from '../../key-service/app.js';
import { APP_KEY_CLAIM_SECONDS, MAX_UNCLAIMED_APP_KEYS } from '../../key-service/app-sessions.js';
import { openDatabase } from '../../key-service/db.js';
import { rotateMasterKey } from '../../key-service/master-key.js';
import { removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

type AuditEntry = { detail: { client_id?: string; reason?: string } };

let t: TestKms;
let now = Date.now();
const qrng = new Qrng();
const ADMIN = 'Bearer test-admin-token';

async function call(method: string, path: string, auth: string | undefined, body?: unknown) {
  const res = await fetch(`${t.url}${path}`, {
    method,
    headers: {
      ...(auth ? { authorization: auth } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies of several shapes, read by field
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function token(id: string, secret: string): Promise<string> {
  const r = await call('POST', '/api/v1/auth/token', undefined, {
    grant_type: 'client_credentials',
    client_id: id,
    client_secret: secret,
  });
  return `Bearer ${r.body.access_token}`;
}

interface App {
  id: string;
  sm2: Sm2KeyPair;
  auth: string;
}
async function addApp(id: string, sm2 = sm2KeyPair()): Promise<App> {
  const r = await call('POST', '/api/v1/admin/apps', ADMIN, { app_id: id, sm2_public_key: sm2.publicKey });
  expect(r.status).toBe(201);
  return { id, sm2, auth: await token(id, r.body.client_secret) };
}

async function fill(batchId: string, n: number) {
  const keys = Array.from({ length: n }, () => Buffer.from(qrng.bytes(16)).toString('base64'));
  return call('POST', '/api/v1/admin/app-keys', ADMIN, { batch_id: batchId, keys });
}

async function challenge(app: App, brokerId = 'broker-1') {
  const r = await call('POST', '/api/v1/apps/session/challenge', app.auth, { broker_id: brokerId });
  expect(r.status).toBe(200);
  return r.body as { app_id: string; kme_id: string; broker_id: string; challenge: string; expires_at: number };
}

function sign(c: Awaited<ReturnType<typeof challenge>>, signer: Sm2KeyPair, change: Record<string, unknown> = {}) {
  const message = challengeMessage({
    appId: c.app_id,
    kmeId: c.kme_id,
    brokerId: c.broker_id,
    challenge: Buffer.from(c.challenge, 'base64'),
    expiresAt: c.expires_at,
    ...change,
  });
  return Buffer.from(signChallenge(message, signer.privateKey, signer.publicKey)).toString('base64');
}

const session = (app: App, body: Record<string, unknown>) => call('POST', '/api/v1/apps/session', app.auth, body);

let broker1: string;
let broker2: string;
let alice: App;
let bob: App;

beforeAll(async () => {
  t = await startTestKms({ challengeTtl: 5 }, undefined, { clock: () => now });
  for (const id of ['broker-1', 'broker-2']) {
    const r = await call('POST', '/api/v1/admin/brokers', ADMIN, { broker_id: id });
    if (id === 'broker-1') broker1 = await token(id, r.body.client_secret);
    else broker2 = await token(id, r.body.client_secret);
  }
  alice = await addApp('alice');
  bob = await addApp('bob');
  expect((await fill('qrng-1', 8)).status).toBe(201);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

describe('SM2 public key registration', () => {
  it('is listed with the app and audited', async () => {
    const apps = (await call('GET', '/api/v1/admin/apps', ADMIN)).body.apps as Array<Record<string, unknown>>;
    expect(apps.find((a) => a.client_id === 'alice')).toMatchObject({ sm2_public_key: alice.sm2.publicKey });
    const audit = await call('GET', '/api/v1/admin/audit?action=app.sm2_key.set', ADMIN);
    expect(audit.body.entries.map((e: AuditEntry) => e.detail.client_id)).toEqual(
      expect.arrayContaining(['alice', 'bob']),
    );
  });

  it('refuses a point off the curve (and registers nothing), malformed and oversized keys', async () => {
    const good = sm2KeyPair().publicKey;
    const offCurve = `${good.slice(0, -2)}${good.endsWith('00') ? '01' : '00'}`;
    let r = await call('POST', '/api/v1/admin/apps', ADMIN, { app_id: 'mallory', sm2_public_key: offCurve });
    expect([r.status, r.body.code]).toEqual([400, 'KMS_ERR_PUBLIC_KEY_INVALID']);
    const apps = (await call('GET', '/api/v1/admin/apps', ADMIN)).body.apps as Array<{ client_id: string }>;
    expect(apps.map((a) => a.client_id)).not.toContain('mallory');
    for (const bad of [
      `04${'0'.repeat(128)}`,
      `${good}00`,
      good.slice(0, -2),
      `02${good.slice(2, 66)}`,
      'x'.repeat(5000),
      42,
    ]) {
      r = await call('PUT', '/api/v1/admin/apps/alice/sm2-public-key', ADMIN, { sm2_public_key: bad });
      expect(r.status).toBe(400);
      expect(['KMS_ERR_BAD_REQUEST', 'KMS_ERR_PUBLIC_KEY_INVALID']).toContain(r.body.code);
    }
    // Nothing replaced alice's key.
    const list = (await call('GET', '/api/v1/admin/apps', ADMIN)).body.apps as Array<Record<string, unknown>>;
    expect(list.find((a) => a.client_id === 'alice')!.sm2_public_key).toBe(alice.sm2.publicKey);
  });

  it('is set later for an app, upper-case hex stored lowercase; not for unknown apps, brokers, or revoked apps', async () => {
    const r0 = await call('POST', '/api/v1/admin/apps', ADMIN, { app_id: 'late' });
    expect(r0.status).toBe(201);
    const late = { id: 'late', sm2: sm2KeyPair(), auth: await token('late', r0.body.client_secret) };
    let r = await call('POST', '/api/v1/apps/session/challenge', late.auth, { broker_id: 'broker-1' });
    expect([r.status, r.body.code]).toEqual([409, 'KMS_ERR_CONFLICT']);
    r = await call('PUT', '/api/v1/admin/apps/late/sm2-public-key', ADMIN, {
      sm2_public_key: late.sm2.publicKey.toUpperCase().replace(/^04/, '04'),
    });
    expect(r).toMatchObject({ status: 200, body: { sm2_public_key: late.sm2.publicKey } });
    const c = await challenge(late);
    expect(
      (await session(late, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, late.sm2) })).status,
    ).toBe(200);
    const key = { sm2_public_key: sm2KeyPair().publicKey };
    expect((await call('PUT', '/api/v1/admin/apps/nobody/sm2-public-key', ADMIN, key)).status).toBe(404);
    expect((await call('PUT', '/api/v1/admin/apps/broker-1/sm2-public-key', ADMIN, key)).status).toBe(404);
    await call('POST', '/api/v1/admin/apps/late/revoke', ADMIN, {});
    expect((await call('PUT', '/api/v1/admin/apps/late/sm2-public-key', ADMIN, key)).status).toBe(409);
    expect((await call('PUT', '/api/v1/admin/apps/alice/sm2-public-key', undefined, key)).status).toBe(401);
    expect((await call('PUT', '/api/v1/admin/apps/alice/sm2-public-key', alice.auth, key)).status).toBe(401);
  });
});

describe('application session key', () => {
  it('is delivered under the app SM2 key, and the broker claims the same key once', async () => {
    const before = (await call('GET', '/api/v1/admin/app-keys', ADMIN)).body;
    const c = await challenge(alice);
    expect(c).toMatchObject({ app_id: 'alice', broker_id: 'broker-1', kme_id: 'qkey-kms' });
    const r = await session(alice, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, alice.sm2) });
    expect(r.status).toBe(200);
    const key = unwrapSessionKey(Buffer.from(r.body.wrapped_key, 'base64'), alice.sm2.privateKey)!;
    expect(key).toHaveLength(16);
    // Only alice's private key opens it.
    expect(unwrapSessionKey(Buffer.from(r.body.wrapped_key, 'base64'), bob.sm2.privateKey)).toBeUndefined();
    const after = (await call('GET', '/api/v1/admin/app-keys', ADMIN)).body;
    expect(after.filled).toBe(before.filled - 1);
    expect(after.issued).toBe(before.issued + 1);
    // Key material never appears in the audit.
    expect(JSON.stringify((await call('GET', '/api/v1/admin/audit?limit=1000', ADMIN)).body)).not.toContain(
      Buffer.from(key).toString('base64'),
    );

    const claimBody = { key_IDs: [{ key_ID: r.body.key_ID }] };
    // Another broker, another app's SAE id: as unknown as a key never made.
    let claim = await call('POST', '/api/v1/apps/alice/dec_keys', broker2, claimBody);
    expect([claim.status, claim.body.details]).toEqual([400, [{ key_ID: r.body.key_ID, reason: 'unknown' }]]);
    claim = await call('POST', '/api/v1/apps/bob/dec_keys', broker1, claimBody);
    expect(claim.body.details).toEqual([{ key_ID: r.body.key_ID, reason: 'unknown' }]);
    // The app itself, the admin, nobody: not a broker.
    for (const auth of [alice.auth, ADMIN, undefined])
      expect((await call('POST', '/api/v1/apps/alice/dec_keys', auth, claimBody)).status).toBe(401);
    claim = await call('POST', '/api/v1/apps/alice/dec_keys', broker1, claimBody);
    expect(claim.status).toBe(200);
    expect(Buffer.from(claim.body.keys[0].key, 'base64')).toEqual(Buffer.from(key));
    claim = await call('POST', '/api/v1/apps/alice/dec_keys', broker1, claimBody);
    expect([claim.status, claim.body.code, claim.body.details]).toEqual([
      400,
      'KMS_ERR_KEY_UNAVAILABLE',
      [{ key_ID: r.body.key_ID, reason: 'claimed' }],
    ]);
  });

  it('refuses a replayed challenge', async () => {
    const c = await challenge(alice);
    const body = { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, alice.sm2) };
    expect((await session(alice, body)).status).toBe(200);
    expect((await session(alice, body)).body.code).toBe('KMS_ERR_LOGIN_FAILED');
  });

  it('refuses an expired challenge', async () => {
    const c = await challenge(alice);
    now += 6000;
    const r = await session(alice, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, alice.sm2) });
    expect([r.status, r.body.code]).toEqual([401, 'KMS_ERR_LOGIN_FAILED']);
  });

  it("refuses another app's signature, a signature over other fields, and spends the challenge", async () => {
    const c = await challenge(alice);
    // bob signs alice's exact challenge message with his key: alice's registered key does not verify it.
    let r = await session(alice, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, bob.sm2) });
    expect(r.body.code).toBe('KMS_ERR_LOGIN_FAILED');
    // The right signature after a failed try: the challenge is gone.
    r = await session(alice, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, alice.sm2) });
    expect(r.body.code).toBe('KMS_ERR_LOGIN_FAILED');
    for (const change of [{ expiresAt: 0 }, { kmeId: 'other-kme' }, { brokerId: 'broker-2' }, { appId: 'bob' }]) {
      const d = await challenge(alice);
      r = await session(alice, {
        broker_id: 'broker-1',
        challenge: d.challenge,
        signature: sign(d, alice.sm2, change),
      });
      expect(r.body.code).toBe('KMS_ERR_LOGIN_FAILED');
    }
    const audit = await call('GET', '/api/v1/admin/audit?action=app.session.failed&limit=1000', ADMIN);
    expect(audit.body.entries.map((e: AuditEntry) => e.detail.reason)).toContain('signature');
  });

  it('refuses a challenge used by another app or for another broker', async () => {
    const c = await challenge(alice);
    // bob presents alice's challenge, signed by bob over bob's name: issued to alice, so refused.
    let r = await session(bob, {
      broker_id: 'broker-1',
      challenge: c.challenge,
      signature: sign({ ...c, app_id: 'bob' }, bob.sm2),
    });
    expect(r.body.code).toBe('KMS_ERR_LOGIN_FAILED');
    const d = await challenge(alice, 'broker-1');
    r = await session(alice, {
      broker_id: 'broker-2',
      challenge: d.challenge,
      signature: sign({ ...d, broker_id: 'broker-2' }, alice.sm2),
    });
    expect(r.body.code).toBe('KMS_ERR_LOGIN_FAILED');
  });

  it('refuses wrong tokens: none, garbled, a broker token, the admin token, a revoked app', async () => {
    for (const auth of [undefined, 'Bearer x.y.z', broker1, ADMIN]) {
      const r = await call('POST', '/api/v1/apps/session/challenge', auth, { broker_id: 'broker-1' });
      expect([r.status, r.body.code]).toEqual([401, 'KMS_ERR_UNAUTHORIZED']);
    }
    const carol = await addApp('carol');
    const c = await challenge(carol);
    await call('POST', '/api/v1/admin/apps/carol/revoke', ADMIN, {});
    const r = await session(carol, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, carol.sm2) });
    expect([r.status, r.body.code]).toEqual([401, 'KMS_ERR_UNAUTHORIZED']);
  });

  it('refuses an unknown broker, malformed bodies, and answers 503 when the pool is empty', async () => {
    let r = await call('POST', '/api/v1/apps/session/challenge', alice.auth, { broker_id: 'broker-9' });
    expect(r.status).toBe(404);
    for (const body of [
      { broker_id: 'broker-1', challenge: 'AAAA', signature: 'AAAA' },
      {
        broker_id: 'broker-1',
        challenge: Buffer.alloc(32).toString('base64'),
        signature: Buffer.alloc(65).toString('base64'),
      },
      { broker_id: 'broker-1', challenge: Buffer.alloc(32).toString('base64') },
    ]) {
      r = await session(alice, body);
      expect([r.status, r.body.code]).toEqual([400, 'KMS_ERR_BAD_REQUEST']);
    }
    expect((await fill('qrng-1', 1)).status).toBe(409);
    const { filled } = (await call('GET', '/api/v1/admin/app-keys', ADMIN)).body;
    for (let i = 0; i < filled; i++) {
      const c = await challenge(bob);
      expect(
        (await session(bob, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, bob.sm2) })).status,
      ).toBe(200);
    }
    const c = await challenge(bob);
    r = await session(bob, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, bob.sm2) });
    expect([r.status, r.body.code]).toEqual([503, 'KMS_ERR_POOL_EMPTY']);
  });
});

describe('the app key pool across a master-key rotation', () => {
  it('rewraps issued and unused app keys: the broker claims the key the app got before the rotation', async () => {
    expect((await fill('qrng-2', 2)).status).toBe(201);
    const c = await challenge(alice);
    const r = await session(alice, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, alice.sm2) });
    const key = unwrapSessionKey(Buffer.from(r.body.wrapped_key, 'base64'), alice.sm2.privateKey)!;
    const dir = t.dataDir;
    await t.stop();
    const db = openDatabase(join(dir, DB_FILE), { create: false });
    expect(rotateMasterKey(db, dir).rewrapped).toBeGreaterThanOrEqual(2);
    db.close();
    t = await startTestKms({ challengeTtl: 5 }, dir, { clock: () => now });
    const claim = await call('POST', '/api/v1/apps/alice/dec_keys', broker1, { key_IDs: [{ key_ID: r.body.key_ID }] });
    expect(Buffer.from(claim.body.keys[0].key, 'base64')).toEqual(Buffer.from(key));
    const d = await challenge(alice);
    const next = await session(alice, { broker_id: 'broker-1', challenge: d.challenge, signature: sign(d, alice.sm2) });
    expect(next.status).toBe(200);
  });
});

describe('issued keys an app never has claimed', () => {
  it('are bounded per app (the shared pool cannot be drained) and expire after the claim window', async () => {
    expect((await fill('qrng-3', 12)).status).toBe(201);
    const dave = await addApp('dave');
    const issue = async () => {
      const c = await challenge(dave);
      return session(dave, { broker_id: 'broker-1', challenge: c.challenge, signature: sign(c, dave.sm2) });
    };
    const ids: string[] = [];
    for (let i = 0; i < MAX_UNCLAIMED_APP_KEYS; i++) ids.push((await issue()).body.key_ID as string);
    const refused = await issue();
    expect([refused.status, refused.body.code]).toEqual([429, 'KMS_ERR_RATE_LIMITED']);
    // Claiming one frees a place.
    await call('POST', '/api/v1/apps/dave/dec_keys', broker1, { key_IDs: [{ key_ID: ids[0] }] });
    expect((await issue()).status).toBe(200);
    const before = (await call('GET', '/api/v1/admin/app-keys', ADMIN)).body;
    now += APP_KEY_CLAIM_SECONDS * 1000 + 1;
    const late = await call('POST', '/api/v1/apps/dave/dec_keys', broker1, { key_IDs: [{ key_ID: ids[1] }] });
    expect(late.body.details).toEqual([{ key_ID: ids[1], reason: 'expired' }]);
    expect((await issue()).status).toBe(200);
    // Every key issued before the window closed expired (dave's and the earlier tests'); only the new one is issued.
    expect((await call('GET', '/api/v1/admin/app-keys', ADMIN)).body).toMatchObject({
      issued: 1,
      expired: before.expired + before.issued,
    });
  });
});
