// Hostile callers of the console: no, forged or expired sessions; forms without their CSRF token or from another
// origin; other spellings of every console route; stored and reflected markup; oversized bodies; foreign Host
// names; guessing the admin token; and the API's credentials and the console's kept apart.
import type { RouteOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKms, type Kms } from '../../key-service/app.js';
import { loadKmsConfig } from '../../key-service/config.js';
import { CONSOLE_CSP } from '../../key-service/console/guard.js';
import { newKmsDir, removeDir } from '../helpers/kms.js';
import { type Answer, ConsoleBrowser, csrfOf, form, raw } from './client.js';

const TOKEN = 'attack-admin-token';
let kms: Kms;
let dataDir: string;
let base: string;
let now = Date.now();
const clock = () => now;
/** Route options as fastify passed them to onRoute; a group sets `config.role` after the app's own hooks ran. */
const seen: RouteOptions[] = [];

beforeAll(async () => {
  dataDir = newKmsDir();
  const config = loadKmsConfig(
    {
      port: 0,
      dataDir,
      logLevel: 'silent',
      adminToken: TOKEN,
      console: { enabled: true, idleSeconds: 600, maxSessionSeconds: 3600 },
      loginLimits: { perSource: 5, perSubjectSource: 5 },
    },
    { env: {} },
  );
  kms = await buildKms(config, { clock });
  kms.app.addHook('onRoute', (r: RouteOptions) => void seen.push(r));
  await kms.app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(kms.app.server.address() as { port: number }).port}`;
  const store = kms.context.store;
  store.registerDevice('dev-1', null, 'test');
  store.registerDevice('dev-2', null, 'test');
});
afterAll(async () => {
  await kms.close();
  removeDir(dataDir);
});

async function signedIn(): Promise<ConsoleBrowser> {
  const b = new ConsoleBrowser(base);
  expect((await b.login(TOKEN)).status).toBe(303);
  return b;
}

const consoleRoutes = () =>
  seen
    .flatMap((r) => [r.method].flat().map((method) => ({ method, url: r.url, role: r.config?.role })))
    .filter((r) => r.role === 'console' && r.method !== 'HEAD');
const concrete = (url: string) => url.replace(/:id/g, 'dev-1');

/** Refused without reaching the page: a GET goes to the sign-in form, anything else is 401; no fleet data shown. */
function expectSignedOut(r: Answer, method: string, what: string): void {
  if (method === 'GET') {
    expect(r.status, what).toBe(303);
    expect(r.headers.location, what).toBe('/console/login');
  } else expect(r.status, what).toBe(401);
  expect(r.body, what).not.toContain('dev-1');
  expect(r.headers['content-security-policy'], what).toBe(CONSOLE_CSP);
}

/** Other spellings of a path an outsider might try: each must reach the same route and its check. */
function spellings(path: string): string[] {
  const segs = path.split('/').slice(1);
  const join = (parts: string[]) => `/${parts.join('/')}`;
  const out = [path, path.toUpperCase().replace('DEV-1', 'dev-1'), `${path}/`, `${path}?`, `http://127.0.0.1${path}`];
  segs.forEach((seg, i) => {
    const letter = seg.search(/[a-z]/);
    const with_ = (v: string) => join(segs.map((s, j) => (j === i ? v : s)));
    if (letter >= 0 && seg !== 'dev-1')
      out.push(with_(`${seg.slice(0, letter)}%${seg.charCodeAt(letter).toString(16)}${seg.slice(letter + 1)}`));
    out.push(with_(`/${seg}`), with_(`${seg};p=1`), with_(`./${seg}`), with_(`zz/../${seg}`));
  });
  return out;
}

describe('sessions', () => {
  it('walks every console route: none answers without a session', async () => {
    expect(consoleRoutes().length).toBeGreaterThanOrEqual(14);
    const b = await signedIn();
    let checked = 0;
    for (const r of consoleRoutes()) {
      for (const path of spellings(concrete(r.url))) {
        const a = await raw(
          base,
          r.method,
          path,
          { 'content-type': 'application/x-www-form-urlencoded' },
          r.method === 'POST' ? 'csrf=x' : undefined,
        );
        expectSignedOut(a, r.method, `${r.method} ${path}`);
        // Signed in, the same spelling reaches the route: a page (or its redirect), never "no such console page".
        if (r.method === 'GET') {
          const page = await b.get(path);
          expect(page.flat, `${r.method} ${path} signed in`).not.toContain('No such console page');
          expect(page.status, `${r.method} ${path} signed in`).toBeLessThan(500);
        }
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(150);
    for (const r of consoleRoutes()) {
      const a = await raw(
        base,
        r.method,
        concrete(r.url),
        { 'content-type': 'application/x-www-form-urlencoded' },
        r.method === 'POST' ? 'csrf=x' : undefined,
      );
      expectSignedOut(a, r.method, `${r.method} ${r.url}`);
    }
  });

  it('refuses a forged cookie, the admin token as a cookie, and a cookie given twice', async () => {
    const good = (await signedIn()).cookie!;
    const forged = [
      'qkey_console=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
      `qkey_console=${TOKEN}`,
      `qkey_console=${good.split('=')[1]!.slice(0, -1)}x`,
      `${good}; ${good}`, // two cookies of one name: ambiguous, so neither counts
      good.replace('qkey_console', 'QKEY_CONSOLE'),
    ];
    for (const cookie of forged) expectSignedOut(await raw(base, 'GET', '/console/devices', { cookie }), 'GET', cookie);
    expect((await raw(base, 'GET', '/console/devices', { cookie: good })).status).toBe(200);
  });

  it('ends a session after its idle time and after its longest life, whatever its use', async () => {
    const idle = await signedIn();
    now += 599_000;
    expect((await idle.get('/console/devices')).status).toBe(200); // used: idle time restarts
    now += 599_000;
    expect((await idle.get('/console/devices')).status).toBe(200);
    now += 600_000;
    expectSignedOut(await idle.get('/console/devices'), 'GET', 'idle for 600 s');
    const busy = await signedIn();
    for (let i = 0; i < 7; i++) {
      now += 500_000;
      expect((await busy.get('/console/devices')).status, `after ${(i + 1) * 500} s`).toBe(200);
    }
    now += 500_000; // 4,000 s since sign-in: past maxSessionSeconds
    expectSignedOut(await busy.get('/console/devices'), 'GET', 'past the longest life');
  });

  it('does not take the admin bearer token for a console page, nor the console cookie for the admin API', async () => {
    expectSignedOut(
      await raw(base, 'GET', '/console/devices', { authorization: `Bearer ${TOKEN}` }),
      'GET',
      'bearer on console',
    );
    const b = await signedIn();
    const api = await raw(base, 'GET', '/api/v1/admin/devices', { cookie: b.cookie! });
    expect(api.status).toBe(401);
  });
});

describe('forms', () => {
  it('refuses a missing, wrong or other session’s CSRF token, and changes nothing', async () => {
    const b = await signedIn();
    const other = await signedIn();
    const otherToken = await other.csrf();
    const forms: Array<Record<string, string>> = [{}, { csrf: '' }, { csrf: 'x'.repeat(43) }, { csrf: otherToken }];
    for (const fields of forms) {
      const r = await b.post('/console/devices/dev-1/revoke', fields);
      expect(r.status, JSON.stringify(fields)).toBe(403);
      expect(kms.context.store.device('dev-1')!.state).toBe('active');
    }
    const app = await b.post('/console/apps', { csrf: otherToken, id: 'app-csrf' });
    expect(app.status).toBe(403);
    expect(app.body).not.toContain('client-secret');
    expect(kms.context.store.client('app-csrf')).toBeUndefined();
  });

  it('refuses a form from another origin, a null origin, or one that names none, even with the right token', async () => {
    const b = await signedIn();
    const csrf = await b.csrf();
    const origins: Array<Record<string, string>> = [
      { origin: 'http://evil.example' },
      { origin: 'null' },
      { origin: `${base}.evil.example` },
      { origin: base.replace('http:', 'https:') },
      { origin: '', 'sec-fetch-site': 'cross-site' },
    ];
    for (const headers of origins) {
      const h = { ...headers };
      const r =
        h.origin === ''
          ? await raw(
              base,
              'POST',
              '/console/devices/dev-1/revoke',
              {
                cookie: b.cookie!,
                'content-type': 'application/x-www-form-urlencoded',
                'sec-fetch-site': 'cross-site',
              },
              form({ csrf }),
            )
          : await b.post('/console/devices/dev-1/revoke', { csrf }, h);
      expect(r.status, JSON.stringify(headers)).toBe(403);
    }
    // No Origin, and no Sec-Fetch-Site either: refused too (browsers send one of them).
    const bare = await raw(
      base,
      'POST',
      '/console/devices/dev-1/revoke',
      { cookie: b.cookie!, 'content-type': 'application/x-www-form-urlencoded' },
      form({ csrf }),
    );
    expect(bare.status).toBe(403);
    expect(kms.context.store.device('dev-1')!.state).toBe('active');
    // Sign-in itself is a form: a cross-origin one is refused before the token is looked at.
    const login = await raw(
      base,
      'POST',
      '/console/login',
      { origin: 'http://evil.example', 'content-type': 'application/x-www-form-urlencoded' },
      form({ token: TOKEN }),
    );
    expect(login.status).toBe(403);
    expect(login.headers['set-cookie']).toBeUndefined();
  });

  it('reaches the same guarded route under every spelling of its path', async () => {
    const b = await signedIn();
    const spellings = [
      '/console/devices/dev-1/revoke',
      '/console/devices/dev-1/%72evoke',
      '/%63onsole/devices/dev-1/revoke',
      '/console//devices/dev-1/revoke',
      '/CONSOLE/DEVICES/dev-1/REVOKE',
      '/console/devices;x=1/dev-1/revoke',
      '/console/./devices/dev-1/revoke',
      '/console/zz/../devices/dev-1/revoke',
      '/console%2Fdevices/dev-1/revoke',
      '/console/devices/dev-1/revoke/',
    ];
    for (const path of spellings) {
      expectSignedOut(await raw(base, 'GET', path), 'GET', path);
      expectSignedOut(
        await raw(base, 'POST', path, { 'content-type': 'application/x-www-form-urlencoded' }, 'csrf=x'),
        'POST',
        path,
      );
      // Signed in: the confirmation page, and without a CSRF token the form is refused.
      const page = await b.get(path);
      expect(page.status, path).toBe(200);
      expect(page.flat, path).toContain('Revoke device dev-1');
      expect((await b.post(path, { reason: 'x' })).status, path).toBe(403);
    }
    expect(kms.context.store.device('dev-1')!.state).toBe('active');
  });

  it('refuses oversized bodies before reading them', async () => {
    const login = await raw(
      base,
      'POST',
      '/console/login',
      { origin: base, 'content-type': 'application/x-www-form-urlencoded' },
      form({ token: 'x'.repeat(8000) }),
    );
    expect(login.status).toBe(413);
    const b = await signedIn();
    const csrf = await b.csrf();
    const big = await b.post('/console/devices/dev-1/revoke', { csrf, reason: 'x'.repeat(20_000) });
    expect(big.status).toBe(413);
    const long = await b.post('/console/devices/dev-1/revoke', { csrf, reason: 'x'.repeat(300) });
    expect(long.status).toBe(400); // within the body limit, past the reason's 256
    expect(kms.context.store.device('dev-1')!.state).toBe('active');
  });

  it("holds apps and brokers added in the console to the admin API's own schemas", async () => {
    const b = await signedIn();
    const csrf = await b.csrf();
    const refused: Array<[string, Record<string, string>]> = [
      ['/console/apps', { id: 'app-nul', publish: 'a\u0000b' }],
      ['/console/apps', { id: 'app-many', subscribe: Array.from({ length: 65 }, (_, i) => `t/${i}`).join(',') }],
      ['/console/apps', { id: 'app-long', publish: 'x'.repeat(1025) }],
      ['/console/apps', { id: '-not-an-id' }],
      ['/console/brokers', { id: 'broker-fp', cert_fingerprint: 'AB:CD' }],
      ['/console/brokers', { id: 'broker-subject', cert_subject: 'no equals sign' }],
    ];
    for (const [path, fields] of refused) {
      const r = await b.post(path, { csrf, ...fields });
      expect(r.status, `${path} ${JSON.stringify(fields)}`).toBe(400);
      expect(r.body).not.toContain('client-secret');
      expect(kms.context.store.client(fields.id!)).toBeUndefined();
    }
    const fingerprint = Array.from({ length: 32 }, () => 'ab').join(':');
    const ok = await b.post('/console/brokers', { csrf, id: 'broker-fp-ok', cert_fingerprint: fingerprint });
    expect(ok.status, ok.flat.slice(ok.flat.indexOf('<main'), ok.flat.indexOf('<main') + 400)).toBe(201);
    expect(kms.context.store.client('broker-fp-ok')!.cert_fingerprint).toBe(fingerprint.toUpperCase());
  });

  it('takes forms only: a JSON body is refused even with the right token and origin', async () => {
    const b = await signedIn();
    const csrf = await b.csrf();
    const r = await raw(
      base,
      'POST',
      '/console/devices/dev-1/revoke',
      { cookie: b.cookie!, origin: base, 'content-type': 'application/json' },
      JSON.stringify({ csrf }),
    );
    expect(r.status).toBe(400);
    expect(kms.context.store.device('dev-1')!.state).toBe('active');
  });

  it('refuses a form field given twice rather than choosing one', async () => {
    const b = await signedIn();
    const csrf = await b.csrf();
    const r = await raw(
      base,
      'POST',
      '/console/devices/dev-1/revoke',
      { cookie: b.cookie!, origin: base, 'content-type': 'application/x-www-form-urlencoded' },
      `csrf=${csrf}&csrf=${csrf}`,
    );
    expect(r.status).toBe(400);
    expect(kms.context.store.device('dev-1')!.state).toBe('active');
  });
});

describe('policy forms', () => {
  const ENTRY = { id: 'pol-1', role: 'device', filter: 'devices/+/up/#', encryption: 'required' };
  const policies = () => kms.context.policies;
  const untouched = () => {
    expect(policies().get('pol-1')).toMatchObject({ encryption: 'required', version: 1 });
    expect(
      policies()
        .table()
        .entries.map((e) => e.policy_id),
    ).toEqual(['pol-1']);
  };
  beforeAll(() => {
    if (policies().table().entries.length === 0) policies().set('pol-1', ENTRY as never, 'test');
  });

  it('refuses a set or delete without the CSRF token, with a wrong one, or with another session’s', async () => {
    const b = await signedIn();
    const other = await (await signedIn()).csrf();
    for (const token of [undefined, '', 'x', other]) {
      const fields: Record<string, string> = token === undefined ? {} : { csrf: token };
      const set = await b.post('/console/policies', { ...fields, ...ENTRY, encryption: 'plaintext' });
      expect(set.status, String(token)).toBe(403);
      const del = await b.post('/console/policies/pol-1/delete', fields);
      expect(del.status, String(token)).toBe(403);
    }
    untouched();
  });

  it('refuses a set or delete from another origin, a null origin, or a cross-site fetch, even with the token', async () => {
    const b = await signedIn();
    const csrf = await b.csrf('/console/policies');
    for (const headers of [{ origin: 'http://evil.example' }, { origin: 'null' }, { origin: `${base}.evil.example` }]) {
      expect((await b.post('/console/policies', { csrf, ...ENTRY, encryption: 'plaintext' }, headers)).status).toBe(
        403,
      );
      expect((await b.post('/console/policies/pol-1/delete', { csrf }, headers)).status).toBe(403);
    }
    for (const path of ['/console/policies', '/console/policies/pol-1/delete']) {
      const r = await raw(
        base,
        'POST',
        path,
        { cookie: b.cookie!, 'content-type': 'application/x-www-form-urlencoded', 'sec-fetch-site': 'cross-site' },
        form({ csrf, ...ENTRY, encryption: 'plaintext' }),
      );
      expect(r.status, path).toBe(403);
    }
    untouched();
  });

  it('reaches the same guarded delete under every spelling of its path', async () => {
    const b = await signedIn();
    for (const path of [
      '/console/policies/pol-1/delete',
      '/console/policies/pol-1/%64elete',
      '/%63onsole/policies/pol-1/delete',
      '/console//policies/pol-1/delete',
      '/CONSOLE/POLICIES/pol-1/DELETE',
      '/console/policies;x=1/pol-1/delete',
      '/console/./policies/pol-1/delete',
      '/console/zz/../policies/pol-1/delete',
      '/console%2Fpolicies/pol-1/delete',
      '/console/policies/pol-1/delete/',
      '/console/policies/pol%2D1/delete',
    ]) {
      expectSignedOut(await raw(base, 'GET', path), 'GET', path);
      expectSignedOut(
        await raw(base, 'POST', path, { 'content-type': 'application/x-www-form-urlencoded' }, 'csrf=x'),
        'POST',
        path,
      );
      const page = await b.get(path);
      expect(page.status, path).toBe(200);
      expect(page.flat, path).toContain('Delete entry pol-1');
      expect((await b.post(path, {})).status, path).toBe(403);
    }
    // A policy id that is no id (a path in disguise) never reaches the store.
    for (const path of ['/console/policies/..%2Fpol-1/delete', '/console/policies/%2e%2e/delete'])
      expect((await b.get(path)).status, path).toBeGreaterThanOrEqual(400);
    untouched();
  });

  it('refuses oversized policy forms: the body before it is read, each field past its bound', async () => {
    const b = await signedIn();
    const csrf = await b.csrf('/console/policies');
    expect((await b.post('/console/policies', { csrf, ...ENTRY, filter: 'x/'.repeat(20_000) })).status).toBe(413);
    for (const [field, value] of [
      ['filter', 'x'.repeat(4097)],
      ['principal', 'x'.repeat(257)],
      ['suites', '1,'.repeat(40)],
      ['max_payload', '9'.repeat(17)],
    ] as const) {
      const r = await b.post('/console/policies', { csrf, ...ENTRY, id: 'pol-big', [field]: value });
      expect(r.status, field).toBe(400);
    }
    const extra = await b.post('/console/policies', { csrf, ...ENTRY, id: 'pol-extra', version: '99' });
    expect(extra.status).toBe(400);
    untouched();
  });

  it('renders hostile topic filters escaped on every policy page and in the audit log', async () => {
    const PAYLOAD = `"><script>alert(1)</script><img src=x onerror=alert(2)>'`;
    const b = await signedIn();
    const csrf = await b.csrf('/console/policies');
    const set = await b.post('/console/policies', {
      csrf,
      id: 'pol-xss',
      role: 'app',
      filter: PAYLOAD,
      encryption: 'optional',
    });
    expect(set.status).toBe(303);
    expect(policies().get('pol-xss').filter).toBe(PAYLOAD);
    for (const path of [
      '/console/policies',
      '/console/policies/pol-xss',
      '/console/policies/pol-xss/delete',
      '/console/audit?action=policy.set',
    ]) {
      const r = await b.get(path);
      expect(r.status, path).toBe(200);
      expect(r.body, path).not.toMatch(/<script|<img|onerror=alert\(2\)>/);
      expect(r.body, path).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    }
    // Reflected: a refused form's reason shows no markup either.
    const refused = await b.post('/console/policies', {
      csrf,
      id: 'pol-xss2',
      role: 'app',
      filter: `${PAYLOAD}/#/x`,
      encryption: 'optional',
    });
    expect(refused.status).toBe(400);
    expect(refused.body).not.toMatch(/<script|<img/);
    expect((await b.post('/console/policies/pol-xss/delete', { csrf })).status).toBe(303);
    untouched();
  });
});

describe('markup from stored and reflected data', () => {
  const PAYLOAD = `"><script>alert(1)</script><img src=x onerror=alert(2)>'`;

  it('renders hostile stored values escaped: revoke reasons, serials, ACLs, certificate subjects, audit details', async () => {
    const store = kms.context.store;
    store.registerDevice('dev-xss', PAYLOAD, 'test');
    store.revokeDevice('dev-xss', PAYLOAD, 'test');
    store.registerClient('app-xss', 'app', { publish: [PAYLOAD], subscribe: [PAYLOAD] }, 'test');
    store.registerClient('broker-xss', 'broker', null, 'test', { subject: `CN=${PAYLOAD}` });
    store.audit(PAYLOAD, PAYLOAD, 'dev-xss', { note: PAYLOAD });
    const b = await signedIn();
    for (const path of [
      '/console/devices/dev-xss',
      '/console/apps',
      '/console/brokers',
      '/console/audit',
      '/console/audit?device=dev-xss',
    ]) {
      const r = await b.get(path);
      expect(r.status, path).toBe(200);
      expect(r.body, path).not.toMatch(/<script|<img|onerror=alert\(2\)>/);
      expect(r.body, path).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    }
  });

  it('renders reflected query values escaped (search box, audit filter)', async () => {
    const b = await signedIn();
    const q = encodeURIComponent(PAYLOAD);
    for (const path of [`/console/devices?q=${q}`, `/console/audit?action=${q}`]) {
      const r = await b.get(path);
      expect(r.status, path).toBe(200);
      expect(r.body, path).not.toMatch(/<script|<img/);
      expect(r.body, path).toContain('&quot;&gt;&lt;script&gt;');
    }
  });

  it('sends the strict CSP, frame and cache headers on every page, the sign-in form included', async () => {
    const b = await signedIn();
    for (const path of [
      '/console/login',
      '/console/devices',
      '/console/devices/dev-1',
      '/console/audit',
      '/console/nowhere',
    ]) {
      const r = await b.get(path);
      expect(r.headers['content-security-policy'], path).toBe(CONSOLE_CSP);
      expect(r.headers['x-frame-options'], path).toBe('DENY');
      expect(r.headers['cache-control'], path).toBe('no-store');
      expect(r.headers['x-content-type-options'], path).toBe('nosniff');
    }
    expect(CONSOLE_CSP).toContain("frame-ancestors 'none'");
    expect(CONSOLE_CSP).not.toMatch(/script-src|unsafe/);
    const css = await raw(base, 'GET', '/console/console.css');
    expect(css.headers['content-type']).toBe('text/css; charset=utf-8');
  });
});

describe('Host names and sign-in guessing', () => {
  it('answers only to the listen host and loopback names (DNS rebinding)', async () => {
    const b = await signedIn();
    for (const host of ['evil.example', 'evil.example:80', '127.0.0.1.evil.example', 'a b', '127.0.0.1@evil.example']) {
      const r = await raw(base, 'GET', '/console/devices', { cookie: b.cookie!, host });
      expect([400, 421], host).toContain(r.status);
      expect(r.body, host).not.toContain('dev-1');
      const login = await raw(base, 'GET', '/console/login', { host });
      expect([400, 421], host).toContain(login.status);
    }
    for (const host of ['localhost', '127.0.0.1:9', '[::1]:80'])
      expect((await raw(base, 'GET', '/console/devices', { cookie: b.cookie!, host })).status, host).toBe(200);
  });

  it('limits wrong admin tokens with backoff, and never records the token presented', async () => {
    now += 10_000_000; // past earlier tests' attempts
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const r = await raw(
        base,
        'POST',
        '/console/login',
        { origin: base, 'content-type': 'application/x-www-form-urlencoded' },
        form({ token: `guess-${i}` }),
      );
      statuses.push(r.status);
      expect(r.headers['set-cookie']).toBeUndefined();
    }
    expect(statuses.slice(0, 5)).toEqual([401, 401, 401, 401, 401]);
    expect(statuses.slice(5)).toContain(429);
    // Even the right token waits out the backoff from this source.
    const right = await raw(
      base,
      'POST',
      '/console/login',
      { origin: base, 'content-type': 'application/x-www-form-urlencoded' },
      form({ token: TOKEN }),
    );
    expect(right.status).toBe(429);
    expect(Number(right.headers['retry-after'])).toBeGreaterThan(0);
    const audit = JSON.stringify(kms.context.store.queryAudit(0, 100, null, 'login.failed'));
    expect(audit).toContain('console');
    expect(audit).not.toContain('guess-');
    now += 10_000_000;
    expect((await new ConsoleBrowser(base).login(TOKEN)).status).toBe(303);
  });
});

describe('the session and CSRF secrets', () => {
  it('keeps the session out of URLs and pages, and gives each session its own CSRF token', async () => {
    const a = await signedIn();
    const b = await signedIn();
    const pageA = await a.get('/console/devices');
    expect(pageA.body).not.toContain(a.cookie!.split('=')[1]!);
    expect(csrfOf(pageA.body)).not.toBe(await b.csrf());
  });
});
