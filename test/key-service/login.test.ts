// Device login (challenge, proof, token), client credentials, rate limiting, and tokens that brokers verify offline.
import { createPublicKey } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsHttpError } from '../../kms-api/client.js';
import { loginProof, verifyToken, TokenError } from '../../protocol/index.js';
import { provisionDevice, type ProvisionedDevice, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

let t: TestKms;
let dev: ProvisionedDevice;
/** Login limits run on this clock, so a backoff cannot run out between two requests on a slow machine. */
const clock = Date.now();

beforeAll(async () => {
  t = await startTestKms({ loginLimits: { perSubjectSource: 3, perSource: 1000 }, challengeTtl: 5 }, undefined, {
    clock: () => clock,
  });
  dev = await provisionDevice(t.admin, 'dev-login', 1, 1);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

async function publicKeys() {
  const { keys } = await t.anon.tokenKeys();
  return new Map(
    keys.map((k) => [
      k.kid,
      createPublicKey({ key: Buffer.from(k.public_key, 'base64'), format: 'der', type: 'spki' }),
    ]),
  );
}

async function login(deviceId: string, loginKey: Buffer) {
  const { challenge } = await t.anon.challenge(deviceId);
  const mac = Buffer.from(loginProof(loginKey, deviceId, Buffer.from(challenge, 'base64'))).toString('base64');
  return { challenge, mac, token: () => t.anon.deviceToken(deviceId, challenge, mac) };
}

async function code(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'OK',
    (e: KmsHttpError) => `${e.status} ${e.code}`,
  );
}

describe('device login', () => {
  it('a correct proof gets a short-lived device token that verifies offline with the published key', async () => {
    const r = await (await login('dev-login', dev.loginKey)).token();
    expect(r).toMatchObject({ token_type: 'Bearer', expires_in: 600 });
    const keys = await publicKeys();
    const claims = verifyToken(r.access_token, keys, Math.floor(Date.now() / 1000));
    expect(claims).toMatchObject({ sub: 'dev-login', role: 'device' });
    expect(claims.exp - claims.iat).toBe(600);
    expect(() => verifyToken(r.access_token, keys, claims.exp + 60)).toThrow(new TokenError('TOKEN_ERR_EXPIRED'));
    const forged = `${r.access_token.slice(0, -4)}AAAA`;
    expect(() => verifyToken(forged, keys, claims.iat)).toThrow(TokenError);
  });

  it('a challenge is single use, bound to its device, and expires', async () => {
    const l = await login('dev-login', dev.loginKey);
    await l.token();
    expect(await code(l.token())).toBe('401 KMS_ERR_LOGIN_FAILED');
    const other = await provisionDevice(t.admin, 'dev-login-2', 1, 1);
    const { challenge } = await t.anon.challenge('dev-login');
    const mac = Buffer.from(loginProof(other.loginKey, 'dev-login-2', Buffer.from(challenge, 'base64'))).toString(
      'base64',
    );
    expect(await code(t.anon.deviceToken('dev-login-2', challenge, mac))).toBe('401 KMS_ERR_LOGIN_FAILED');
  });

  it('wrong key, unknown device and malformed bodies fail clearly', async () => {
    const wrong = await login('dev-login-2', Buffer.alloc(16, 7));
    expect(await code(wrong.token())).toBe('401 KMS_ERR_LOGIN_FAILED');
    const ghost = await login('ghost-device', Buffer.alloc(16, 1));
    expect(await code(ghost.token())).toBe('401 KMS_ERR_LOGIN_FAILED');
    expect(
      await code(t.anon.request('POST', '/api/v1/auth/token', { grant_type: 'device_challenge', device_id: 'x' })),
    ).toBe('400 KMS_ERR_BAD_REQUEST');
    expect(await code(t.anon.request('POST', '/api/v1/auth/token', { grant_type: 'password' }))).toBe(
      '400 KMS_ERR_BAD_REQUEST',
    );
    expect(await code(t.anon.request('POST', '/api/v1/auth/challenge', { device_id: 'has/slash' }))).toBe(
      '400 KMS_ERR_BAD_REQUEST',
    );
  });

  it('repeated failures for a device from one source are answered 429 with Retry-After there', async () => {
    const d = await provisionDevice(t.admin, 'dev-limited', 1, 1);
    for (let i = 0; i < 3; i++)
      expect(await code((await login('dev-limited', Buffer.alloc(16, i))).token())).toBe('401 KMS_ERR_LOGIN_FAILED');
    const res = await fetch(`${t.url}/api/v1/auth/challenge`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ device_id: 'dev-limited' }),
    });
    expect(res.status).toBe(429);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(((await res.json()) as { code: string }).code).toBe('KMS_ERR_RATE_LIMITED');
    expect(d.loginKey.length).toBe(16);
    // Other devices are unaffected.
    expect(await code((await login('dev-login', dev.loginKey)).token())).toBe('OK');
  });

  it('a revoked device cannot log in', async () => {
    const d = await provisionDevice(t.admin, 'dev-revoked', 1, 1);
    await t.admin.revokeDevice('dev-revoked', 'stolen');
    expect(await code((await login('dev-revoked', d.loginKey)).token())).toBe('401 KMS_ERR_LOGIN_FAILED');
  });
});

describe('client credentials', () => {
  it('apps get tokens carrying their ACL; wrong secrets and revoked clients fail', async () => {
    const { client_secret } = await t.admin.registerApp('app-dash', { subscribe: ['devices/+/up/#'], publish: [] });
    const r = await t.anon.clientToken('app-dash', client_secret);
    const claims = verifyToken(r.access_token, await publicKeys(), Math.floor(Date.now() / 1000));
    expect(claims).toMatchObject({ sub: 'app-dash', role: 'app', acl: { subscribe: ['devices/+/up/#'], publish: [] } });
    expect(await code(t.anon.clientToken('app-dash', `${client_secret}x`))).toBe('401 KMS_ERR_LOGIN_FAILED');
    await t.admin.revokeClient('app', 'app-dash');
    expect(await code(t.anon.clientToken('app-dash', client_secret))).toBe('401 KMS_ERR_LOGIN_FAILED');
  });
});

describe('revocation feed', () => {
  it('lists revoked devices and apps for brokers, after a cursor; devices and apps may not read it', async () => {
    const { client_secret } = await t.admin.registerBroker('broker-feed');
    const broker = t.anon.withToken((await t.anon.clientToken('broker-feed', client_secret)).access_token);
    const all = await broker.revocations(0);
    expect(all.revocations.map((r) => `${r.role}:${r.subject}`)).toEqual(
      expect.arrayContaining(['device:dev-revoked', 'app:app-dash']),
    );
    const d = await provisionDevice(t.admin, 'dev-late', 1, 1);
    const device = t.anon.withToken((await (await login('dev-late', d.loginKey)).token()).access_token);
    expect(await code(device.revocations(0))).toBe('401 KMS_ERR_UNAUTHORIZED');
    await t.admin.revokeDevice('dev-late');
    const next = await broker.revocations(all.cursor);
    expect(next.revocations).toEqual([expect.objectContaining({ subject: 'dev-late', role: 'device' })]);
    expect(next.cursor).toBeGreaterThan(all.cursor);
  });
});
