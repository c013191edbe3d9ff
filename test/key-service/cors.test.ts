// Cross-origin calls (key-service/cors.ts): a listed origin gets the three application-session routes and nothing
// else, never with credentials or "*"; a foreign origin, another spelling of it, a disallowed method or header, and
// every other route get no CORS answer; the allowlist refuses a wildcard or a path at configuration time.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadKmsConfig } from '../../key-service/config.js';
import { removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

const PAGE = 'https://app.example';
let t: TestKms;

beforeAll(async () => {
  t = await startTestKms({ corsOrigins: [PAGE] });
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

const preflight = (url: string, origin: string, method = 'POST', headers = 'content-type, authorization') =>
  t.kms.app.inject({
    method: 'OPTIONS',
    url,
    headers: { origin, 'access-control-request-method': method, 'access-control-request-headers': headers },
  });

describe('CORS for the browser application client', () => {
  it.each(['/api/v1/auth/token', '/api/v1/apps/session/challenge', '/api/v1/apps/session'])(
    'a listed origin may call %s: preflight 204 naming that origin, no credentials',
    async (url) => {
      const r = await preflight(url, PAGE);
      expect(r.statusCode).toBe(204);
      expect(r.headers['access-control-allow-origin']).toBe(PAGE);
      expect(r.headers['access-control-allow-methods']).toBe('POST');
      expect(r.headers['access-control-allow-credentials']).toBeUndefined();
      expect(r.headers.vary).toMatch(/Origin/);
    },
  );

  it('the call itself names the origin, errors included (the client reads the error code)', async () => {
    const r = await t.kms.app.inject({
      method: 'POST',
      url: '/api/v1/auth/token',
      headers: { origin: PAGE, 'content-type': 'application/json' },
      payload: { grant_type: 'client_credentials', client_id: 'nobody', client_secret: 'x'.repeat(32) },
    });
    expect(r.statusCode).toBe(401);
    expect(r.headers['access-control-allow-origin']).toBe(PAGE);
    expect(r.headers['access-control-allow-credentials']).toBeUndefined();
  });

  it.each([
    ['a foreign origin', 'https://evil.example'],
    ['the origin with a path', `${PAGE}/`],
    ['the origin over http', 'http://app.example'],
    ['another port', `${PAGE}:8443`],
    ['a suffix', `${PAGE}.evil.example`],
    ['the null origin', 'null'],
  ])('%s gets a 403 preflight and no CORS header', async (_name, origin) => {
    const r = await preflight('/api/v1/apps/session', origin);
    expect(r.statusCode).toBe(403);
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
    const call = await t.kms.app.inject({
      method: 'POST',
      url: '/api/v1/auth/token',
      headers: { origin, 'content-type': 'application/json' },
      payload: {},
    });
    expect(call.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('a listed origin is refused another method or header', async () => {
    expect((await preflight('/api/v1/apps/session', PAGE, 'DELETE')).statusCode).toBe(403);
    expect((await preflight('/api/v1/apps/session', PAGE, 'POST', 'content-type, x-admin')).statusCode).toBe(403);
  });

  it.each(['/api/v1/admin/apps', '/api/v1/keys/dev-1/enc_keys', '/api/v1/apps/app-1/dec_keys', '/healthz'])(
    'no other route answers CORS, even to a listed origin: %s',
    async (url) => {
      const r = await preflight(url, PAGE);
      expect(r.headers['access-control-allow-origin']).toBeUndefined();
      expect(r.statusCode).not.toBe(204);
    },
  );

  it('other spellings of a session route are the same route, and get the same answer', async () => {
    for (const url of [
      '/API/v1/apps/SESSION',
      '/api/v1//apps/session',
      '/api/v1/apps/./session',
      '/api/v1/apps/session?x=1',
    ]) {
      const r = await preflight(url, 'https://evil.example');
      expect(r.statusCode).toBe(403);
      expect(r.headers['access-control-allow-origin']).toBeUndefined();
    }
    expect((await preflight('/API/v1/apps/SESSION', PAGE)).statusCode).toBe(204);
  });

  it('the allowlist takes origins only: no wildcard, path, or other scheme', () => {
    for (const bad of ['*', 'https://*.example', `${PAGE}/`, `${PAGE}/app`, 'null', 'file://x', 'app.example'])
      expect(() => loadKmsConfig({ corsOrigins: [bad] }, { env: {} }), bad).toThrow();
    expect(loadKmsConfig({}, { env: {} }).corsOrigins).toEqual([]);
  });
});
