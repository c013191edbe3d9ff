// The console's pages and actions over real HTTP: sign-in, devices, keys by state, revocation with confirmation,
// apps and brokers (secret shown once), the audit log newest first, and live broker figures from /metrics.
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { provisionDevice, startTestKms, type TestKms } from '../helpers/kms.js';
import { ConsoleBrowser } from './client.js';

let t: TestKms;
let metricsServer: Server;
let metricsUrl: string;

const METRICS = `# HELP broker_connected_clients Connected MQTT clients by role
# TYPE broker_connected_clients gauge
broker_connected_clients{role="device"} 3
broker_connected_clients{role="app"} 1
broker_uplink_total{outcome="opened"} 120
broker_uplink_total{outcome="replay"} 2
broker_downlink_total{outcome="sealed"} 40
broker_downlink_total{outcome="resealed"} 1
broker_publish_rejected_total{reason="acl"} 5
broker_kms_up 1
`;

beforeAll(async () => {
  metricsServer = createServer((req, res) => {
    if (req.url === '/metrics') res.writeHead(200, { 'content-type': 'text/plain' }).end(METRICS);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => metricsServer.listen(0, '127.0.0.1', r));
  metricsUrl = `http://127.0.0.1:${(metricsServer.address() as { port: number }).port}/metrics`;
  // A port nothing listens on: taken, then given back.
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const deadUrl = `http://127.0.0.1:${(closed.address() as { port: number }).port}/metrics`;
  await new Promise((r) => closed.close(r));
  t = await startTestKms({
    console: { enabled: true, brokerMetrics: [metricsUrl, deadUrl], brokerTimeoutMs: 1000 },
  });
  await provisionDevice(t.admin, 'dev-a', 4, 4);
  await provisionDevice(t.admin, 'dev-b', 20, 20);
  await t.admin.registerDevice('dev-empty');
});
afterAll(async () => {
  await t.stop();
  metricsServer.close();
});

async function signedIn(): Promise<ConsoleBrowser> {
  const b = new ConsoleBrowser(t.url);
  const r = await b.login('test-admin-token');
  expect(r.status).toBe(303);
  expect(r.headers.location).toBe('/console/devices');
  return b;
}

describe('console pages', () => {
  it('is off by default: no /console route without console.enabled', async () => {
    const off = await startTestKms();
    try {
      const r = await new ConsoleBrowser(off.url).get('/console/login');
      expect(r.status).toBe(404);
    } finally {
      await off.stop();
    }
  });

  it('signs in with the admin token into an HttpOnly, SameSite=Strict cookie on /console', async () => {
    const b = new ConsoleBrowser(t.url);
    const login = await b.get('/console/login');
    expect(login.status).toBe(200);
    expect(login.flat).toContain('<label for="token">Admin token');
    const r = await b.login('test-admin-token');
    const cookie = String(r.headers['set-cookie']);
    expect(cookie).toMatch(/^qkey_console=[A-Za-z0-9_-]{43}; Path=\/console; HttpOnly; SameSite=Strict$/);
    expect(r.headers.location).not.toContain('token');
  });

  it('lists devices with their state, pools, low pools, pending batches and last seen; searches and filters', async () => {
    const b = await signedIn();
    const all = await b.get('/console/devices');
    expect(all.status).toBe(200);
    for (const id of ['dev-a', 'dev-b', 'dev-empty']) expect(all.body).toContain(`<code>${id}</code>`);
    expect(all.flat).toMatch(
      /dev-a<\/code><\/a><\/th>\s*<td><span class="state-active">active<\/span><\/td>\s*<td class="num">4<\/td><td class="num">4<\/td>\s*<td><span class="low">low<\/span>/,
    );
    const search = await b.get('/console/devices?q=DEV-B');
    expect(search.body).toContain('<code>dev-b</code>');
    expect(search.body).not.toContain('<code>dev-a</code>');
    const low = await b.get('/console/devices?low=1');
    expect(low.body).toContain('<code>dev-a</code>');
    expect(low.body).not.toContain('<code>dev-b</code>'); // 20 + 20 keys: above the low water mark (16)
  });

  it("shows a device's keys by state as counts and index ranges, never key material", async () => {
    const b = await signedIn();
    const r = await b.get('/console/devices/dev-a');
    expect(r.status).toBe(200);
    expect(r.flat).toMatch(
      /<td>up<\/td><td>filled<\/td><td class="num">4<\/td><td class="num">0<\/td><td class="num">3<\/td>/,
    );
    expect(r.flat).toMatch(
      /<td>down<\/td><td>filled<\/td><td class="num">4<\/td><td class="num">4<\/td><td class="num">7<\/td>/,
    );
    expect(r.body).not.toMatch(/key_ID|wrapped|login_key/);
    expect((await b.get('/console/devices/no-such-device')).status).toBe(404);
  });

  it('revokes a device only through its confirmation form, then shows it revoked', async () => {
    await provisionDevice(t.admin, 'dev-revoke-me', 2, 2);
    const b = await signedIn();
    const confirm = await b.get('/console/devices/dev-revoke-me/revoke');
    expect(confirm.status).toBe(200);
    expect(confirm.flat).toContain('destroys its 4 unused keys');
    expect((await t.admin.device('dev-revoke-me')).state).toBe('active'); // seeing the form changed nothing
    const csrf = /name="csrf" value="([^"]+)"/.exec(confirm.body)![1]!;
    const done = await b.post('/console/devices/dev-revoke-me/revoke', { csrf, reason: 'lost in transit' });
    expect(done.status).toBe(303);
    expect(done.headers.location).toBe('/console/devices/dev-revoke-me');
    const page = await b.get('/console/devices/dev-revoke-me');
    expect(page.flat).toContain('<span class="state-revoked">revoked</span>');
    expect(page.body).toContain('lost in transit');
    expect((await t.admin.device('dev-revoke-me')).state).toBe('revoked');
  });

  it('adds an app and shows its secret once, which then works; revokes it', async () => {
    const b = await signedIn();
    const csrf = await b.csrf('/console/apps');
    const r = await b.post('/console/apps', { csrf, id: 'app-console', publish: 'devices/+/down/x', subscribe: '' });
    expect(r.status).toBe(201);
    const secret = /<code id="client-secret">([^<]+)<\/code>/.exec(r.flat)![1]!;
    expect(r.headers['cache-control']).toBe('no-store');
    const token = await t.anon.clientToken('app-console', secret);
    expect(token.access_token).toBeTruthy();
    // Shown once: the list, the audit log and the logs never carry it.
    expect((await b.get('/console/apps')).body).not.toContain(secret);
    expect((await b.get('/console/audit')).body).not.toContain(secret);
    expect(t.logs()).not.toContain(secret);
    expect(JSON.parse(t.kms.context.store.client('app-console')!.acl!)).toEqual({
      publish: ['devices/+/down/x'],
      subscribe: ['devices/+/up/#'],
    });
    // Registering the same id again is refused, with nothing shown.
    const again = await b.post('/console/apps', { csrf, id: 'app-console' });
    expect(again.status).toBe(409);
    expect(again.body).not.toContain('client-secret');
    const revoke = await b.post('/console/apps/app-console/revoke', { csrf });
    expect(revoke.status).toBe(303);
    expect((await b.get('/console/apps')).flat).toMatch(/app-console<\/code><\/th>\s*<td><span class="state-revoked">/);
    await expect(t.anon.clientToken('app-console', secret)).rejects.toThrow();
  });

  it('adds and revokes a broker, and shows live figures from the configured brokers', async () => {
    const b = await signedIn();
    const page = await b.get('/console/brokers');
    expect(page.status).toBe(200);
    const live = page.flat.slice(page.flat.indexOf('Live figures'));
    expect(live).toContain(`<code>${metricsUrl}</code>`);
    expect(live).toMatch(
      /<td class="num">4<br><span class="muted">device 3, app 1<\/span><\/td>\s*<td class="num">120<\/td>\s*<td class="num">41<\/td>/,
    );
    expect(live).toContain('<li>uplink: replay<strong>2</strong></li>');
    expect(live).toContain('<li>publish: acl<strong>5</strong></li>');
    expect(live).toContain('<span class="yes">reachable</span>');
    expect(live).toContain('broker unreachable:</span>ECONNREFUSED');
    const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)![1]!;
    const added = await b.post('/console/brokers', {
      csrf,
      id: 'broker-console',
      cert_fingerprint: '',
      cert_subject: '',
    });
    expect(added.status).toBe(201);
    expect(added.flat).toMatch(/<code id="client-secret">[A-Za-z0-9_-]{32}<\/code>/);
    expect((await b.post('/console/brokers/broker-console/revoke', { csrf })).status).toBe(303);
    expect(t.kms.context.store.client('broker-console')?.state).toBe('revoked');
  });

  it('pages the audit log newest first', async () => {
    for (let i = 0; i < 60; i++) await t.admin.registerDevice(`audit-${String(i).padStart(2, '0')}`);
    const b = await signedIn();
    const first = await b.get('/console/audit?action=device.register');
    const ids = (body: string) => [...body.matchAll(/<td class="num">(\d+)<\/td><td>/g)].map((m) => Number(m[1]));
    const page1 = ids(first.flat);
    expect(page1).toHaveLength(50);
    expect(page1).toEqual([...page1].sort((x, y) => y - x));
    expect(first.body).toContain('<code>audit-59</code>');
    const older = /href="([^"]+)" rel="next">Older entries/.exec(first.flat)![1]!.replace(/&amp;/g, '&');
    const second = await b.get(older);
    const page2 = ids(second.flat);
    expect(Math.max(...page2)).toBeLessThan(Math.min(...page1));
    expect(page1.length + page2.length).toBe(64); // 60 + dev-a, dev-b, dev-empty, dev-revoke-me
    expect(second.body).toContain('Oldest entry reached.');
    expect(second.body).toContain('Newest entries');
  });

  it('pages the device list in id order, and a search past the first page', async () => {
    const b = await signedIn(); // 64 devices by now (the audit test registered 60)
    const ids = (flat: string) =>
      [...flat.matchAll(/<th scope="row"><a href="[^"]+"><code>([^<]+)<\/code>/g)].map((m) => m[1]!);
    const first = await b.get('/console/devices');
    const page1 = ids(first.flat);
    expect(page1).toHaveLength(50);
    expect(page1).toEqual([...page1].sort());
    const next = /href="([^"]+)" rel="next">Next devices/.exec(first.flat)![1]!.replace(/&amp;/g, '&');
    const page2 = ids((await b.get(next)).flat);
    expect(page2.length).toBe(64 - 50);
    expect(page2[0]! > page1[49]!).toBe(true);
    expect((await b.get(next)).flat).toContain('End of the list.');
    const search = await b.get('/console/devices?q=audit-5');
    expect(ids(search.flat)).toEqual(Array.from({ length: 10 }, (_, i) => `audit-5${i}`));
  });

  it('logs out: the cookie is cleared and the old session no longer works', async () => {
    const b = await signedIn();
    const old = b.cookie!;
    const csrf = await b.csrf();
    const r = await b.post('/console/logout', { csrf });
    expect(r.status).toBe(303);
    expect(r.headers.location).toBe('/console/login');
    expect(String(r.headers['set-cookie'])).toContain('Max-Age=0');
    b.cookie = old;
    const after = await b.get('/console/devices');
    expect(after.status).toBe(303);
    expect(after.headers.location).toBe('/console/login');
  });
});
