// Who may call which route, checked against fastify's own route table: every non-public route answers 401 to no
// credential and to every other role's, under every spelling of its path; a route outside a caller group stops the app.
import { request as httpRequest, Agent } from 'node:http';
import type { RouteOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callerGroup, CALLER_ROLES, type CallerRole } from '../../key-service/access.js';
import { buildKms, type Kms } from '../../key-service/app.js';
import { loadKmsConfig } from '../../key-service/config.js';
import { issueToken } from '../../key-service/context.js';
import { newKmsDir, removeDir } from '../helpers/kms.js';

interface WalkedRoute {
  method: string;
  url: string;
  role: CallerRole | undefined;
}

let kms: Kms;
let dataDir: string;
let base: { host: string; port: number };
/** Route options as fastify passed them to onRoute; a group sets `config.role` after the app's own hooks ran. */
const seen: RouteOptions[] = [];
let routes: WalkedRoute[] = [];
const agent = new Agent({ keepAlive: true, maxSockets: 8 });
/** A credential of each kind an outsider or another party might hold. */
const credentials: Record<string, string | undefined> = {};

function config(dir: string) {
  return loadKmsConfig({ port: 0, dataDir: dir, logLevel: 'silent', adminToken: 'test-admin-token' }, { env: {} });
}

beforeAll(async () => {
  dataDir = newKmsDir();
  kms = await buildKms(config(dataDir));
  // Fastify's own route table, as each route is added, with the role its group gave it.
  kms.app.addHook('onRoute', (r: RouteOptions) => void seen.push(r));
  await kms.app.listen({ host: '127.0.0.1', port: 0 });
  routes = seen.flatMap((r) => [r.method].flat().map((method) => ({ method, url: r.url, role: r.config?.role })));
  base = { host: '127.0.0.1', port: (kms.app.server.address() as { port: number }).port };
  const ctx = kms.context;
  ctx.store.registerClient('broker-walk', 'broker', null, 'test');
  ctx.store.registerClient('app-walk', 'app', { publish: ['#'], subscribe: ['#'] }, 'test');
  credentials['no credential'] = undefined;
  credentials['a garbled token'] = 'Bearer not-a-token';
  credentials['another scheme'] = `Basic ${Buffer.from('admin:test-admin-token').toString('base64')}`;
  credentials['a device token'] = `Bearer ${issueToken(ctx, 'device', 'dev-walk').token}`;
  credentials['an app token'] =
    `Bearer ${issueToken(ctx, 'app', 'app-walk', { publish: ['#'], subscribe: ['#'] }).token}`;
  credentials['a broker token'] = `Bearer ${issueToken(ctx, 'broker', 'broker-walk').token}`;
  credentials['a token for an unregistered broker'] = `Bearer ${issueToken(ctx, 'broker', 'broker-ghost').token}`;
  credentials['the admin token'] = `Bearer ${ctx.adminToken}`;
});
afterAll(async () => {
  agent.destroy();
  await kms.close();
  removeDir(dataDir);
});

/** The credentials each role's callers hold, and none. */
const ROLE_CREDENTIALS = ['no credential', 'a device token', 'an app token', 'a broker token', 'the admin token'];
/** The console is off here (its session-cookie routes are walked in test/console/access.test.ts). */
const RIGHT: Record<Exclude<CallerRole, 'public'>, string> = {
  broker: 'a broker token',
  admin: 'the admin token',
  console: 'a console session',
  app: 'an app token',
};

function send(
  method: string,
  path: string,
  authorization?: string | string[],
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      // Raw header list: a repeated header is sent as it is, once per value.
      {
        ...base,
        agent,
        method,
        path,
        headers: [
          'host',
          `${base.host}:${base.port}`,
          ...[authorization ?? []].flat().flatMap((v) => ['authorization', v]),
        ],
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The route's path with a value in place of each parameter, and which segments are parameters. */
function concrete(url: string): Array<{ text: string; param: boolean }> {
  return url
    .split('/')
    .slice(1)
    .map((s) =>
      s.startsWith(':') ? { text: `x-${s.slice(1).toLowerCase()}`, param: true } : { text: s, param: false },
    );
}

const pct = (c: string) => `%${c.charCodeAt(0).toString(16).padStart(2, '0').toUpperCase()}`;

/** Every spelling an outsider might try for one path: each should reach the same route, and its group's check. */
function spellings(url: string): Array<[string, string]> {
  const segs = concrete(url);
  const join = (parts: string[]) => `/${parts.join('/')}`;
  const plain = segs.map((s) => s.text);
  const out: Array<[string, string]> = [['canonical', join(plain)]];
  segs.forEach((s, i) => {
    const letter = s.text.search(/[a-z]/i);
    if (letter >= 0) {
      const encoded = [...plain];
      encoded[i] = s.text.slice(0, letter) + pct(s.text[letter]!) + s.text.slice(letter + 1);
      out.push([`segment ${i} with a percent-encoded letter`, join(encoded)]);
    }
    if (i > 0)
      out.push([
        `slash before segment ${i} percent-encoded`,
        `/${plain.slice(0, i).join('/')}%2F${plain.slice(i).join('/')}`,
      ]);
    const withParam = [...plain];
    withParam[i] = `${s.text};jsessionid=1`;
    out.push([`segment ${i} with a ; parameter`, join(withParam)]);
    const doubled = [...plain];
    doubled[i] = `/${s.text}`;
    out.push([`// before segment ${i}`, join(doubled)]);
    const dot = [...plain];
    dot[i] = `./${s.text}`;
    out.push([`/./ before segment ${i}`, join(dot)]);
    const dotdot = [...plain];
    dotdot[i] = `zz/../${s.text}`;
    out.push([`/../ before segment ${i}`, join(dotdot)]);
  });
  const last = plain.length - 1;
  out.push([
    'a lower-case percent-encoded letter',
    join(plain.map((p, j) => (j === last ? `%${p.charCodeAt(0).toString(16)}${p.slice(1)}` : p))),
  ]);
  out.push(['percent-encoded dot segments', join(plain.map((p, j) => (j === last ? `zz/%2e%2E/${p}` : p)))]);
  out.push(['upper case', join(segs.map((s) => (s.param ? s.text : s.text.toUpperCase())))]);
  out.push(['a trailing /', `${join(plain)}/`]);
  out.push(['a query string', `${join(plain)}?after=0`]);
  out.push(['absolute form', `http://127.0.0.1${join(plain)}`]);
  return out;
}

/** The 404 fastify gives when no route matched (a handler's own 404 names the missing thing instead). */
function isRouteNotFound(r: { status: number; body: string }, method: string): boolean {
  return r.status === 404 && (method === 'HEAD' || r.body.includes(`"no such resource: ${method} /`));
}

describe('route table', () => {
  it('has every route in a caller group: public, broker or admin', () => {
    expect(routes.length).toBeGreaterThan(30);
    for (const r of routes) expect(CALLER_ROLES, `${r.method} ${r.url}`).toContain(r.role);
    const roleOf = (method: string, url: string) => routes.find((r) => r.method === method && r.url === url)?.role;
    expect(roleOf('GET', '/api/v1/admin/devices')).toBe('admin');
    expect(roleOf('POST', '/api/v1/keys/:SAE_ID/enc_keys')).toBe('broker');
    expect(roleOf('GET', '/api/v1/revocations')).toBe('broker');
    expect(roleOf('POST', '/api/v1/auth/token')).toBe('public');
  });

  it('answers 401 to no credential and to every other role, under every spelling of every non-public route', async () => {
    let checked = 0;
    for (const route of routes.filter((r) => r.role !== 'public')) {
      const right = RIGHT[route.role as Exclude<CallerRole, 'public'>];
      const canonicalAnswer = await send(route.method, spellings(route.url)[0]![1], credentials[right]);
      const checks = spellings(route.url).map(async ([spelling, path]) => {
        const what = `${route.method} ${path} (${route.role} route, ${spelling})`;
        // Every other role's credential, and none; odd credentials on the canonical spelling.
        const wrong = Object.keys(credentials).filter(
          (name) => name !== right && (spelling === 'canonical' || ROLE_CREDENTIALS.includes(name)),
        );
        const answers = await Promise.all(wrong.map((name) => send(route.method, path, credentials[name])));
        answers.forEach((r, i) => {
          expect(r.status, `${what} with ${wrong[i]}: ${r.body}`).toBe(401);
          if (route.method !== 'HEAD') expect(JSON.parse(r.body).code, what).toBe('KMS_ERR_UNAUTHORIZED');
          checked++;
        });
        // The right credential reaches the same route under this spelling, not another one or none.
        const r = await send(route.method, path, credentials[right]);
        expect(r.status, `${what} with ${right}: ${r.body}`).not.toBe(401);
        if (route.method === 'HEAD') expect(r.status === 404, what).toBe(canonicalAnswer.status === 404);
        else expect(isRouteNotFound(r, route.method), `${what} with ${right}: ${r.body}`).toBe(false);
      });
      await Promise.all(checks);
    }
    expect(checked).toBeGreaterThan(5000);
  });

  it('answers public routes without any credential', async () => {
    for (const route of routes.filter((r) => r.role === 'public')) {
      const r = await send(
        route.method,
        concrete(route.url)
          .map((s) => `/${s.text}`)
          .join(''),
      );
      expect(r.status, `${route.method} ${route.url}`).not.toBe(401);
    }
  });
});

describe('credentials an outsider might bend', () => {
  it('refuses two Authorization headers, even when one of them is right', async () => {
    for (const [url, right] of [
      ['/api/v1/admin/devices', credentials['the admin token']!],
      ['/api/v1/revocations', credentials['a broker token']!],
    ] as const) {
      for (const pair of [
        [right, 'Bearer x'],
        ['Bearer x', right],
      ]) {
        const r = await send('GET', url, pair);
        expect(r.status, `${url} ${pair.join(' / ')}`).toBe(401);
      }
      expect((await send('GET', url, right)).status).toBe(200);
    }
  });

  it('accepts the bearer scheme in any case, and nothing after the token', async () => {
    const token = kms.context.adminToken;
    const get = (authorization: string) =>
      kms.app.inject({ url: '/api/v1/admin/pools', headers: { authorization } }).then((r) => r.statusCode);
    expect(await get(`bearer ${token}`)).toBe(200);
    expect(await get(`Bearer ${token} extra`)).toBe(401);
    expect(await get(`Bearer${token}`)).toBe(401);
    expect(await get(`Bearer ${token.slice(0, -1)}`)).toBe(401);
  });
});

describe('a route outside every caller group', () => {
  async function refusal(addRoute: (kms: Kms) => void): Promise<unknown> {
    const dir = newKmsDir();
    const other = await buildKms(config(dir));
    try {
      addRoute(other);
      return await other.app.ready().then(
        () => undefined,
        (err: unknown) => err,
      );
    } finally {
      await other.close().catch(() => undefined);
      removeDir(dir);
    }
  }

  it('keeps the app from starting when registered without a group', async () => {
    const err = await refusal((k) => {
      k.app.get('/api/v1/admin/debug', async () => ({ secrets: true }));
    });
    expect(String(err)).toMatch(/without a caller role.*GET \/api\/v1\/admin\/debug/);
  });

  it('keeps the app from starting when it claims a role its registration does not give it', async () => {
    const err = await refusal((k) => {
      k.app.get('/api/v1/admin/debug', { config: { role: 'admin' } }, async () => ({ secrets: true }));
    });
    expect(String(err)).toMatch(/without a caller role.*GET \/api\/v1\/admin\/debug/);
  });

  it('keeps the app from starting when a group route declares another role', async () => {
    const err = await refusal((k) => {
      void k.app.register(
        callerGroup('admin', k.context, (scope) =>
          scope.get('/api/v1/admin/debug', { config: { role: 'public' } }, async () => ({ secrets: true })),
        ),
      );
    });
    expect(String(err)).toMatch(/declares role 'public' inside the admin group/);
  });

  it('starts when the same route is registered in a group, and the group checks its callers', async () => {
    const dir = newKmsDir();
    const other = await buildKms(config(dir));
    try {
      other.app.register(
        callerGroup('admin', other.context, (scope) => scope.get('/api/v1/admin/debug', async () => ({ ok: true }))),
      );
      await other.app.ready();
      expect((await other.app.inject({ url: '/api/v1/admin/debug' })).statusCode).toBe(401);
      const ok = await other.app.inject({
        url: '/api/v1/admin/debug',
        headers: { authorization: `Bearer ${other.context.adminToken}` },
      });
      expect(ok.statusCode).toBe(200);
    } finally {
      await other.close();
      removeDir(dir);
    }
  });
});
