// The console under TLS: its cookie is `__Secure-` prefixed and Secure, and forms need the https origin.
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selfSignedLoopbackCert } from '../helpers/certificates.js';
import { removeDir, startTestKms, tempDir, type TestKms } from '../helpers/kms.js';
import { flatten } from './client.js';

let t: TestKms;
let certDir: string;
let ca: string;

function send(
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; flat: string }> {
  const url = new URL(t.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, method, path, headers, ca }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, flat: flatten(text) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

beforeAll(async () => {
  certDir = tempDir();
  const tls = selfSignedLoopbackCert(certDir);
  ca = readFileSync(tls.cert, 'utf8');
  t = await startTestKms({ tls, console: { enabled: true } });
});
afterAll(async () => {
  await t.stop();
  removeDir(certDir);
});

describe('console over TLS', () => {
  it('sets a __Secure- cookie with Secure, and takes forms only from the https origin', async () => {
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const body = 'token=test-admin-token';
    const http = await send('POST', '/console/login', { ...form, origin: t.url.replace('https:', 'http:') }, body);
    expect(http.status).toBe(403);
    const r = await send('POST', '/console/login', { ...form, origin: t.url }, body);
    expect(r.status).toBe(303);
    const cookie = String(r.headers['set-cookie']);
    expect(cookie).toMatch(
      /^__Secure-qkey_console=[A-Za-z0-9_-]{43}; Path=\/console; HttpOnly; SameSite=Strict; Secure$/,
    );
    const pair = cookie.split(';')[0]!;
    expect((await send('GET', '/console/devices', { cookie: pair })).status).toBe(200);
    // The plain-HTTP name is not the session's name here.
    const plain = pair.replace('__Secure-', '');
    expect((await send('GET', '/console/devices', { cookie: plain })).status).toBe(303);
  });
});
