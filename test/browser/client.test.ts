// The browser application client in headless Chromium (Debian's chromium, driven by puppeteer-core) against the real
// broker (MQTT over WebSocket) and key service: a page served on its own origin imports the module through the import
// map scripts/build-browser-client.mjs writes, logs in, opens a session, opens a device's telemetry sealed app-down,
// sends a sealed command a device opens; the page refuses a replayed or altered envelope and a wrong SM2 key gets no
// session; the page's SM4-GCM matches the Node implementation byte for byte; a page on a foreign origin gets nothing.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { bytesToHex, type Direction, hexToBytes, openEnvelope, sealEnvelope } from '../../protocol/index.js';
import type { SuiteId } from '../../protocol/suites.js';
import type { CryptoBackend } from '../../protocol/backend.js';
import type * as Envelope from '../../protocol/envelope.js';
import type * as Client from '../../browser/app-session-client.js';
import type { AppToken, KmsRequestError } from '../../browser/app-session-client.js';
import { removeDir, startTestKms, tempDir } from '../helpers/kms.js';
import { freePort } from '../helpers/ports.js';
import { sealTelemetryForApps } from '../helpers/app-sessions.js';
import { nextMessage, systemOn, type TestSystem } from '../helpers/system.js';
import { loadVectors } from '../helpers/vectors.js';

/** Debian's package; .ci/run installs it. */
const CHROMIUM = process.env.QKEY_CHROMIUM ?? '/usr/bin/chromium';
const ROOT = join(import.meta.dirname, '..', '..');
const OUT = tempDir('qkey-browser-client-');
const ACL = { publish: ['devices/+/down/#'], subscribe: ['devices/+/up/#'] };

/** What the page's module script and the tests put on the page's global object. */
interface PageGlobals {
  qkey: { client: typeof Client; envelope: typeof Envelope; browserBackend: CryptoBackend };
  session: Client.BrowserAppSession;
  received: Array<{ topic: string; text: string; envelope: number[] }>;
}

let sys: TestSystem;
let browser: Browser;
let page: Page;
let pageOrigin: string;
let foreignOrigin: string;
const servers: Server[] = [];
const pageErrors: string[] = [];

/** The page runs dist/: refuse to test JavaScript older than its TypeScript (npm run build). */
function assertBuilt(): void {
  const built = statSync(join(ROOT, 'dist', 'browser', 'app-session-client.js')).mtimeMs;
  for (const src of ['browser/app-session-client.ts', 'browser/backend.ts', 'protocol/envelope.ts', 'protocol/gcm.ts'])
    if (statSync(join(ROOT, src)).mtimeMs > built) throw new Error(`dist/ is older than ${src}: npm run build`);
}

const MODULE_SCRIPT = `
  import * as client from '/qkey/browser/app-session-client.js';
  import * as envelope from '/qkey/protocol/envelope.js';
  import { browserBackend } from '/qkey/browser/backend.js';
  window.qkey = { client, envelope, browserBackend };
`;
const PAGE = (importMap: string) => `<!doctype html>
<meta charset="utf-8"><title>qkey browser client</title>
<script type="importmap">${importMap}</script>
<script type="module">${MODULE_SCRIPT}</script>`;

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

/**
 * Serves the built client under /qkey/ and the page at /, nothing else (a fixed map, no file-system paths), under
 * the strict Content-Security-Policy SECURITY.md recommends: scripts from this origin and the two inline scripts
 * by hash, connections to the key service and the broker alone, mqtt.js's timer worker.
 */
async function staticServer(port: number, files: string[], importMap: string): Promise<void> {
  const routes = new Map<string, { type: string; body: Buffer }>();
  routes.set('/', { type: 'text/html; charset=utf-8', body: Buffer.from(PAGE(importMap)) });
  for (const f of files) routes.set(`/qkey/${f}`, { type: 'text/javascript', body: readFileSync(join(OUT, f)) });
  const server = createServer((req, res) => {
    const r = routes.get(req.url ?? '');
    if (!r) return void res.writeHead(404).end();
    const csp = [
      "default-src 'none'",
      `script-src 'self' ${sha256(importMap)} ${sha256(MODULE_SCRIPT)}`,
      `connect-src ${sys.kms.url} ${sys.broker.urls.ws!}`,
      // mqtt.js runs its keepalive timer in a worker made from a blob, so that a background tab's throttled timers
      // do not let the connection time out.
      'worker-src blob:',
    ].join('; ');
    res
      .writeHead(200, { 'content-type': r.type, 'x-content-type-options': 'nosniff', 'content-security-policy': csp })
      .end(r.body);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  servers.push(server);
}

async function newApp(appId: string) {
  const sm2 = sm2KeyPair();
  const { client_secret } = await sys.kms.admin.registerApp(appId, { ...ACL, sm2_public_key: sm2.publicKey });
  return { appId, secret: client_secret, sm2 };
}

/** Starts `app`'s session in the page, subscribed to device telemetry, each delivery recorded in `received`. */
async function startPageSession(app: Awaited<ReturnType<typeof newApp>>): Promise<void> {
  await page.evaluate(
    async (o) => {
      const w = globalThis as unknown as PageGlobals;
      w.session = await w.qkey.client.BrowserAppSession.start(o);
      w.received = [];
      w.session.onMessage((topic: string, plaintext: Uint8Array, envelope: Uint8Array) =>
        w.received.push({ topic, text: new TextDecoder().decode(plaintext), envelope: Array.from(envelope) }),
      );
      await w.session.subscribe('devices/+/up/#', { qos: 1 });
    },
    { brokerUrl: sys.broker.urls.ws!, kmsUrl: sys.kms.url, brokerId: 'test-broker', ...app },
  );
}

beforeAll(async () => {
  assertBuilt();
  execFileSync(process.execPath, [join(ROOT, 'scripts/build-browser-client.mjs'), '--out', OUT, '--base', '/qkey/']);
  const importMap = readFileSync(join(OUT, 'importmap.json'), 'utf8');
  const files = execFileSync('find', ['.', '-name', '*.js', '-o', '-name', '*.mjs'], { cwd: OUT, encoding: 'utf8' })
    .split('\n')
    .filter(Boolean)
    .map((f) => f.slice(2));
  const [pagePort, foreignPort] = [await freePort(), await freePort()];
  pageOrigin = `http://127.0.0.1:${pagePort}`;
  foreignOrigin = `http://127.0.0.1:${foreignPort}`;
  await staticServer(pagePort, files, importMap);
  await staticServer(foreignPort, files, importMap);

  // App tokens live 10 s, inside the client's 30 s margin: every handshake logs in again first (the test sees it).
  const kms = await startTestKms({ corsOrigins: [pageOrigin], tokenTtl: { app: 10 } });
  // A key seals or opens 10 envelopes at most: the broker tells the page to rotate after 5 (docs/PROTOCOL.md §22.6).
  sys = await systemOn(kms, {
    ws: { port: 0 },
    wsOrigins: [pageOrigin],
    rotation: { messages: 10, bytes: 1 << 20, seconds: 3600 },
  });
  // Applications receive device telemetry only sealed: the page gets it because it holds a session key.
  await sealTelemetryForApps(sys, 20);

  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in CI containers has no user namespace for Chromium's sandbox; the pages are our own.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (/Content Security Policy|Refused/i.test(m.text())) pageErrors.push(m.text());
  });
  await page.goto(`${pageOrigin}/`);
  await page.waitForFunction('window.qkey !== undefined', { timeout: 10_000 });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await sys?.stop();
  for (const s of servers) await new Promise((r) => s.close(r));
  removeDir(OUT);
});

describe('browser application client in headless Chromium', () => {
  it('loads without a bundler under a strict CSP, with the browser SM4 under protocol/envelope.js', async () => {
    expect(pageErrors).toEqual([]);
    const usesBrowserBackend = await page.evaluate(() => {
      const q = (globalThis as unknown as PageGlobals).qkey;
      return new q.envelope.EnvelopeKey(new Uint8Array(16)).backend === q.browserBackend;
    });
    expect(usesBrowserBackend).toBe(true);
  });

  it('seals the docs/PROTOCOL.md vectors and random envelopes exactly as the Node implementation', async () => {
    type W = { key: string; suite: SuiteId; keyIndex: number; seq: number; deviceId?: string; appId?: string } & {
      topic: string;
      direction: Direction;
      payload: string;
      envelope: string;
    };
    const cases: W[] = [
      ...loadVectors<W>('qkey-envelope.json').vectors,
      ...loadVectors<W>('qkey-app-envelope.json').vectors,
    ].filter((v) => v.envelope);
    const directions: Direction[] = ['up', 'down', 'will', 'app-up', 'app-down'];
    for (let i = 0; i < 100; i++) {
      const c = {
        key: randomBytes(16).toString('hex'),
        suite: (1 + (i % 2)) as SuiteId,
        keyIndex: randomInt(0, 2 ** 32),
        seq: randomInt(0, 2 ** 32),
        deviceId: `app-${i}`,
        topic: `devices/d-${i}/up/${randomBytes(randomInt(1, 30)).toString('base64url')}`,
        direction: directions[i % 5]!,
        payload: randomBytes(randomInt(1, 2000)).toString('hex'),
        envelope: '',
      };
      c.envelope = bytesToHex(sealEnvelope(hexToBytes(c.payload), { ...c, key: hexToBytes(c.key) }));
      cases.push(c);
    }
    const results = await page.evaluate((cases) => {
      const q = (globalThis as unknown as PageGlobals).qkey;
      const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
      const bytes = (s: string) => Uint8Array.from(s.match(/../g) ?? [], (x) => parseInt(x, 16));
      return cases.map((c) => {
        const ctx = { deviceId: (c.deviceId ?? c.appId)!, topic: c.topic, direction: c.direction };
        const key = new q.envelope.EnvelopeKey(bytes(c.key));
        const sealed = hex(q.envelope.sealEnvelope(bytes(c.payload), { ...c, ...ctx, key }));
        const opened = hex(q.envelope.openEnvelope(bytes(c.envelope), { ...ctx, key }).payload);
        return { sealed, opened };
      });
    }, cases);
    results.forEach((r, i) => {
      expect(r.sealed).toBe(cases[i]!.envelope);
      expect(r.opened).toBe(cases[i]!.payload);
    });
    // And what the page sealed opens in Node.
    const last = cases.at(-1)!;
    const ctx = { deviceId: last.deviceId!, topic: last.topic, direction: last.direction };
    expect(
      bytesToHex(openEnvelope(hexToBytes(results.at(-1)!.sealed), { ...ctx, key: hexToBytes(last.key) }).payload),
    ).toBe(last.payload);
  });

  it('opens a session, opens sealed telemetry, sends a sealed command the device opens, refuses replays', async () => {
    const app = await newApp('app-browser');
    const chip = await sys.device('dev-browser');
    const dev = await sys.connectDevice(chip);
    await dev.subscribeAsync('devices/dev-browser/down/#', { qos: 1 });

    await startPageSession(app);
    expect(await page.evaluate(() => (globalThis as unknown as PageGlobals).session.keyIndex)).toBe(0);
    expect(await page.evaluate(() => (globalThis as unknown as PageGlobals).session.client.options.clientId)).toMatch(
      /^app-browser\/browser-[0-9a-f]{16}$/,
    );

    const topic = 'devices/dev-browser/up/telemetry';
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('{"t":21.5}'), topic)), { qos: 1 });
    await page.waitForFunction('window.received.length > 0', { timeout: 5000 });
    const got = (await page.evaluate(() => (globalThis as unknown as PageGlobals).received[0]))!;
    expect(got.topic).toBe(topic);
    expect(got.text).toBe('{"t":21.5}');
    // It came sealed app-down under the page's session key (generation 0), not in clear.
    expect(Buffer.from(got.envelope as number[]).toString()).not.toContain('21.5');
    expect(got.envelope.slice(0, 6)).toEqual([1, 1, 0, 0, 0, 0]);

    // The same envelope again (a replay), and one claiming an unseen sequence number (past the replay window, it fails
    // at the tag: the header is authenticated): neither opens, both are counted, no handler sees them.
    const replay = await page.evaluate((topic) => {
      const w = globalThis as unknown as PageGlobals;
      const env = Uint8Array.from(w.received[0]!.envelope);
      const again = w.session.open(topic, env);
      env[9]! ^= 0x40;
      const altered = w.session.open(topic, env);
      return {
        again: again === undefined,
        altered: altered === undefined,
        refused: w.session.refused,
        n: w.received.length,
      };
    }, topic);
    expect(replay).toEqual({ again: true, altered: true, refused: 2, n: 1 });

    // A command sealed app-up in the page; the broker opens it and reseals it for the device.
    const cmd = nextMessage(dev, 5000, (t) => t.endsWith('/down/cmd'));
    await page.evaluate(() =>
      (globalThis as unknown as PageGlobals).session.publish('devices/dev-browser/down/cmd', 'reboot', { qos: 1 }),
    );
    const delivered = await cmd;
    expect(Buffer.from(chip.openDownlink(delivered.payload, 'devices/dev-browser/down/cmd')).toString()).toBe('reboot');

    // Rotation from the page: generation 1, and traffic goes on under it.
    await page.evaluate(() => (globalThis as unknown as PageGlobals).session.rotate());
    expect(await page.evaluate(() => (globalThis as unknown as PageGlobals).session.keyIndex)).toBe(1);
    dev.publish(topic, Buffer.from(chip.sealUplink(Buffer.from('22'), topic)), { qos: 1 });
    await page.waitForFunction('window.received.length > 1', { timeout: 5000 });
    const second = (await page.evaluate(() => (globalThis as unknown as PageGlobals).received[1]))!;
    expect(second.text).toBe('22');
    expect(second.envelope.slice(2, 6)).toEqual([0, 0, 0, 1]);
    await page.evaluate(() => (globalThis as unknown as PageGlobals).session.close());
    expect(pageErrors).toEqual([]); // the CSP let the session's own connections through, and nothing refused
  });

  it('a page that only receives rotates when the broker tells it to, and misses nothing', async () => {
    const app = await newApp('app-browser-rx');
    const chip = await sys.device('dev-browser-rx', 16);
    const dev = await sys.connectDevice(chip);
    await startPageSession(app);
    const topic = 'devices/dev-browser-rx/up/t';
    for (let i = 0; i < 24; i++)
      await dev.publishAsync(topic, Buffer.from(chip.sealUplink(Buffer.from(String(i)), topic)), { qos: 1 });
    await page.waitForFunction('window.received.length >= 24', { timeout: 15_000 });
    const out = await page.evaluate(() => {
      const w = globalThis as unknown as PageGlobals;
      return {
        texts: w.received.map((r) => r.text),
        generations: w.received.map((r) => (r.envelope[4]! << 8) | r.envelope[5]!),
        keyIndex: w.session.keyIndex,
        refused: w.session.refused,
      };
    });
    expect(out.texts).toEqual(Array.from({ length: 24 }, (_, i) => String(i)));
    expect(out.refused).toBe(0);
    expect(out.keyIndex).toBeGreaterThanOrEqual(2); // 24 deliveries, 10 a key at most, with no publish of its own
    expect(Math.max(...out.generations)).toBe(out.keyIndex);
    await page.evaluate(() => (globalThis as unknown as PageGlobals).session.close());
    await dev.endAsync();
  });

  it("with the caller's token function instead of a secret: the page never sees the secret", async () => {
    const app = await newApp('app-browser-token');
    let calls = 0;
    await page.exposeFunction('qkeyAppToken', () => {
      calls++;
      return sys.kms.anon.clientToken(app.appId, app.secret);
    });
    const result = await page.evaluate(
      async (o) => {
        const g = globalThis as unknown as PageGlobals & { qkeyAppToken: () => Promise<AppToken> };
        const Session = g.qkey.client.BrowserAppSession;
        const refusals: string[] = [];
        for (const bad of [{ ...o }, { ...o, secret: 'x', token: g.qkeyAppToken }])
          await Session.start(bad).catch((e: Error) => refusals.push(e.name));
        const session = await Session.start({ ...o, token: g.qkeyAppToken });
        const first = session.keyIndex;
        await session.rotate();
        const second = session.keyIndex;
        await session.close();
        return { refusals, first, second };
      },
      { brokerUrl: sys.broker.urls.ws!, kmsUrl: sys.kms.url, brokerId: 'test-broker', appId: app.appId, sm2: app.sm2 },
    );
    expect(result).toEqual({ refusals: ['TypeError', 'TypeError'], first: 0, second: 1 });
    // One token for CONNECT, and one before each handshake (the 10 s token is inside the 30 s margin).
    expect(calls).toBe(3);
  });

  it('a wrong SM2 private key gets no session key, and a session key does not unwrap under another key', async () => {
    const app = await newApp('app-browser-wrong');
    const other = sm2KeyPair();
    const outcome = await page.evaluate(
      async (o) => {
        try {
          await (globalThis as unknown as PageGlobals).qkey.client.BrowserAppSession.start(o);
          return 'started';
        } catch (e) {
          const k = e as KmsRequestError;
          return `${k.name} ${k.status} ${k.code}`;
        }
      },
      {
        brokerUrl: sys.broker.urls.ws!,
        kmsUrl: sys.kms.url,
        brokerId: 'test-broker',
        appId: app.appId,
        secret: app.secret,
        sm2: { privateKey: other.privateKey, publicKey: app.sm2.publicKey },
      },
    );
    expect(outcome).toBe('KmsRequestError 401 KMS_ERR_LOGIN_FAILED');

    // A wrapped key the key service issued to the app (Node's wrap), tried under the wrong private key in the page.
    const { wrapSessionKey } = await import('../../protocol/app-session.js');
    const key = randomBytes(16);
    const wrapped = bytesToHex(wrapSessionKey(key, app.sm2.publicKey));
    const unwrapped = await page.evaluate(
      (w, right, wrong) => {
        const c = (globalThis as unknown as PageGlobals).qkey.client;
        const bytes = Uint8Array.from(w.match(/../g)!, (x: string) => parseInt(x, 16));
        const hex = (b?: Uint8Array) => (b ? Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('') : null);
        return { right: hex(c.unwrapSessionKey(bytes, right)), wrong: hex(c.unwrapSessionKey(bytes, wrong)) };
      },
      wrapped,
      app.sm2.privateKey,
      other.privateKey,
    );
    expect(unwrapped).toEqual({ right: key.toString('hex'), wrong: null });
  });

  it('a page on a foreign origin can neither call the key service nor open the WebSocket', async () => {
    const app = await newApp('app-browser-foreign');
    const foreign = await browser.newPage();
    try {
      await foreign.goto(`${foreignOrigin}/`);
      await foreign.waitForFunction('window.qkey !== undefined', { timeout: 10_000 });
      const result = await foreign.evaluate(
        async (o) => {
          const kms = await (globalThis as unknown as PageGlobals).qkey.client.BrowserAppSession.start(o).then(
            () => 'started',
            (e: Error) => e.name,
          );
          const ws = await new Promise<string>((resolve) => {
            const s = new WebSocket(o.brokerUrl, 'mqtt');
            s.onopen = () => resolve('open');
            s.onerror = () => resolve('refused');
          });
          return { kms, ws };
        },
        { brokerUrl: sys.broker.urls.ws!, kmsUrl: sys.kms.url, brokerId: 'test-broker', ...app },
      );
      // fetch rejects with a TypeError when CORS refuses; the broker answered the upgrade 403.
      expect(result).toEqual({ kms: 'TypeError', ws: 'refused' });
      expect(sys.logs()).toMatch(/"reason":"origin".*"websocket upgrade refused"/);
    } finally {
      await foreign.close();
    }
  });
});
