// Logins nobody can lock: floods of wrong proofs, wrong client secrets and challenges from one source while the
// legitimate devices, apps and brokers log in from theirs; forged X-Forwarded-For; racing attempts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loginProof } from '../../protocol/index.js';
import { provisionDevice, type ProvisionedDevice, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

const ATTACKER = '203.0.113.66';
let now = Date.now();
let t: TestKms;

beforeAll(async () => {
  // Defaults for everything but the clock, which only moves when a test moves it.
  t = await startTestKms({}, undefined, { clock: () => now });
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

interface Reply {
  status: number;
  body: { code?: string; challenge?: string; access_token?: string };
  retryAfter: string | undefined;
}

async function post(path: string, body: unknown, source: string, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await t.kms.app.inject({
    method: 'POST',
    url: path,
    payload: body as object,
    remoteAddress: source,
    headers,
  });
  const retry = res.headers['retry-after'];
  return { status: res.statusCode, body: res.json(), retryAfter: retry === undefined ? undefined : String(retry) };
}

async function deviceLogin(d: ProvisionedDevice, source: string, key = d.loginKey): Promise<Reply> {
  const c = await post('/api/v1/auth/challenge', { device_id: d.deviceId }, source);
  if (c.status !== 200) return c;
  const challenge = c.body.challenge!;
  const mac = Buffer.from(loginProof(key, d.deviceId, Buffer.from(challenge, 'base64'))).toString('base64');
  return post('/api/v1/auth/token', { grant_type: 'device_challenge', device_id: d.deviceId, challenge, mac }, source);
}

function tally(replies: Reply[]): Record<number, number> {
  const out: Record<number, number> = {};
  for (const r of replies) out[r.status] = (out[r.status] ?? 0) + 1;
  return out;
}

describe('a flood of wrong device proofs from one source', () => {
  it('1,000 wrong proofs for D while D logs in from another source throughout: every login of D succeeds', async () => {
    const d = await provisionDevice(t.admin, 'dev-target', 1, 1);
    const attacker: Reply[] = [];
    const victim: Reply[] = [];
    for (let i = 0; i < 1000; i++) {
      // Half with a challenge the attacker fetched, half with one it made up.
      attacker.push(
        i % 2
          ? await deviceLogin(d, ATTACKER, Buffer.alloc(16, i & 255))
          : await post(
              '/api/v1/auth/token',
              {
                grant_type: 'device_challenge',
                device_id: d.deviceId,
                challenge: `${'A'.repeat(43)}=`,
                mac: `${'B'.repeat(42)}A=`, // a wrong proof, canonically encoded (docs/PROTOCOL.md §13.1)
              },
              ATTACKER,
            ),
      );
      if (i % 10 === 0) {
        victim.push(await deviceLogin(d, '198.51.100.7'));
        now += 1000; // 100 s in all: the attacker's backoff runs out a few times
      }
    }
    expect(victim.map((r) => r.status)).toEqual(Array(100).fill(200));
    const counts = tally(attacker);
    // 10 free failures, then one more each time a doubling backoff (1, 2, 4, ... 64 s) ran out.
    expect(counts[401]).toBeGreaterThanOrEqual(10);
    expect(counts[401]).toBeLessThanOrEqual(10 + 7);
    expect(counts[429]).toBe(1000 - counts[401]!);
    expect(attacker.find((r) => r.status === 429)).toMatchObject({ body: { code: 'KMS_ERR_RATE_LIMITED' } });
    expect(Number(attacker.find((r) => r.status === 429)!.retryAfter)).toBeGreaterThan(0);
  });

  it('the same attacker spread over many devices meets its per-source backoff; those devices still log in elsewhere', async () => {
    const devices = await Promise.all(
      Array.from({ length: 20 }, (_, i) => provisionDevice(t.admin, `dev-spread-${i}`, 1, 1)),
    );
    const attacker: Reply[] = [];
    for (let i = 0; i < 400; i++)
      attacker.push(await deviceLogin(devices[i % 20]!, '203.0.113.77', Buffer.alloc(16, 1)));
    expect(tally(attacker)[401]).toBe(100); // perSource, then backoff; the clock stands still
    for (const d of devices) expect((await deviceLogin(d, '198.51.100.8')).status).toBe(200);
  });

  it('a forged X-Forwarded-For does not give the attacker a fresh source (proxies are not trusted by default)', async () => {
    const d = await provisionDevice(t.admin, 'dev-xff', 1, 1);
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      const c = await post(
        '/api/v1/auth/token',
        {
          grant_type: 'device_challenge',
          device_id: d.deviceId,
          challenge: `${'A'.repeat(43)}=`,
          mac: `${'B'.repeat(42)}A=`, // a wrong proof, canonically encoded (docs/PROTOCOL.md §13.1)
        },
        '203.0.113.88',
        { 'x-forwarded-for': `10.9.${i}.1` },
      );
      statuses.push(c.status);
    }
    expect(tally(statuses.map((status) => ({ status }) as Reply))).toEqual({ 401: 10, 429: 30 });
  });
});

describe('a flood of challenges from one source', () => {
  it('100 devices log in while one source asks for challenges as fast as it can', async () => {
    const devices = await Promise.all(
      Array.from({ length: 100 }, (_, i) => provisionDevice(t.admin, `dev-crowd-${i}`, 1, 1)),
    );
    const flood: Reply[] = [];
    const logins = devices.map(async (d, i) => {
      const source = `198.51.100.${i + 20}`;
      const c = await post('/api/v1/auth/challenge', { device_id: d.deviceId }, source);
      // The flood runs between each device's challenge and its answer.
      for (let k = 0; k < 20; k++)
        flood.push(
          await post('/api/v1/auth/challenge', { device_id: devices[(i + k) % 100]!.deviceId }, '203.0.113.99'),
        );
      const challenge = c.body.challenge!;
      const mac = Buffer.from(loginProof(d.loginKey, d.deviceId, Buffer.from(challenge, 'base64'))).toString('base64');
      return post(
        '/api/v1/auth/token',
        { grant_type: 'device_challenge', device_id: d.deviceId, challenge, mac },
        source,
      );
    });
    expect((await Promise.all(logins)).map((r) => r.status)).toEqual(Array(100).fill(200));
    expect(tally(flood)).toEqual({ 200: 100, 429: 1900 }); // challengeBurst, then challengeRate (the clock stands still)
    expect(t.kms.context.challenges.size).toBeLessThanOrEqual(100);
  });
});

describe('client credentials under attack', () => {
  for (const role of ['app', 'broker'] as const) {
    it(`1,000 wrong secrets for a ${role}, partly in parallel, while it logs in from another source throughout`, async () => {
      const id = `${role}-target`;
      const { client_secret } = role === 'app' ? await t.admin.registerApp(id) : await t.admin.registerBroker(id);
      const grant = (secret: string) => ({ grant_type: 'client_credentials', client_id: id, client_secret: secret });
      const attacker: Reply[] = [];
      const victim: Reply[] = [];
      for (let round = 0; round < 20; round++) {
        // 50 wrong secrets at once: attempts still being checked count, so the burst gets no extra tries.
        const burst = Array.from({ length: 50 }, (_, k) =>
          post('/api/v1/auth/token', grant(`wrong-${round}-${k}`), '203.0.113.55'),
        );
        victim.push(await post('/api/v1/auth/token', grant(client_secret), '198.51.100.9'));
        attacker.push(...(await Promise.all(burst)));
        now += 1000;
      }
      expect(victim.map((r) => r.status)).toEqual(Array(20).fill(200));
      const counts = tally(attacker);
      expect(counts[401]).toBeGreaterThanOrEqual(10);
      expect(counts[401]).toBeLessThanOrEqual(10 + 5);
      expect(counts[401]! + counts[429]!).toBe(1000);
    });
  }
});

describe('behind a configured reverse proxy (trustProxy)', () => {
  it("takes the client's address from a listed proxy's X-Forwarded-For, and only from a listed proxy", async () => {
    const p = await startTestKms({ trustProxy: ['127.0.0.1'], loginLimits: { perSubjectSource: 2 } }, undefined, {
      clock: () => now,
    });
    try {
      const wrong = (source: string, xff: string) =>
        p.kms.app
          .inject({
            method: 'POST',
            url: '/api/v1/auth/token',
            remoteAddress: source,
            headers: { 'x-forwarded-for': xff },
            payload: { grant_type: 'client_credentials', client_id: 'app-x', client_secret: 'wrong' },
          })
          .then((r) => r.statusCode);
      // Through the proxy: the address it appended is the source; what the client wrote before it is not.
      expect([
        await wrong('127.0.0.1', '10.0.0.1, 192.0.2.1'),
        await wrong('127.0.0.1', '10.0.0.2, 192.0.2.1'),
      ]).toEqual([401, 401]);
      expect(await wrong('127.0.0.1', '10.0.0.3, 192.0.2.1')).toBe(429);
      expect(await wrong('127.0.0.1', '192.0.2.2')).toBe(401); // another client behind the proxy
      // Not through the proxy: the header is ignored and the peer is the source.
      expect([await wrong('203.0.113.5', '192.0.2.3'), await wrong('203.0.113.5', '192.0.2.4')]).toEqual([401, 401]);
      expect(await wrong('203.0.113.5', '192.0.2.5')).toBe(429);
    } finally {
      await p.stop();
      removeDir(p.dataDir);
    }
  });
});
