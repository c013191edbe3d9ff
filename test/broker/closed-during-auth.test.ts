// A connection that ends while the broker is still authenticating it (the key service answers slowly) leaves
// nothing behind: no state in the broker, the keys claimed for it retired at the key service, and the commands queued
// for its persistent session still queued. The only key a CONNECT claims is the first downlink key of a persistent
// session with queued commands (docs/PROTOCOL.md §9.2).
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startTestKms } from '../helpers/kms.js';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { systemOn, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
let proxy: Server;
/** Key requests held back until the test lets them through. */
const held: Array<() => void> = [];
let holding = false;

beforeAll(async () => {
  const kms = await startTestKms();
  // A key service that answers slowly: a proxy that holds ETSI key requests while `holding` is on.
  proxy = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const forward = async () => {
        const body = chunks.length > 0 ? Buffer.concat(chunks) : undefined;
        const headers = Object.fromEntries(
          Object.entries(req.headers).filter(
            ([k, v]) =>
              typeof v === 'string' &&
              !['host', 'connection', 'content-length', 'transfer-encoding', 'keep-alive'].includes(k),
          ),
        ) as Record<string, string>;
        const r = await fetch(`${kms.url}${req.url}`, { method: req.method!, headers, ...(body && { body }) });
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
        res.end(Buffer.from(await r.arrayBuffer()));
      };
      const run = () => forward().catch(() => res.writeHead(502).end());
      if (holding && req.url?.startsWith('/api/v1/keys/')) held.push(() => void run());
      else void run();
    });
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const { port } = proxy.address() as { port: number };
  sys = await systemOn(kms, { kmsUrl: `http://127.0.0.1:${port}` });
});
afterAll(async () => {
  await sys.stop();
  proxy.close();
});

it('a device that disconnects while its queued commands wait for a key leaves no session, no claimed key, and its queue', async () => {
  const chip = await sys.device('dev-impatient');
  const first = await sys.connectDevice(chip, { clean: false });
  await first.subscribeAsync('devices/dev-impatient/down/#', { qos: 1 });
  await first.endAsync();
  const app = await sys.connectApp('ops', { publish: ['devices/+/down/#'] });
  await app.publishAsync('devices/dev-impatient/down/cmd', 'queued', { qos: 1 });
  await app.endAsync();

  chip.beginSession();
  const password = await sys.deviceToken(chip);
  holding = true;
  const raw = await RawMqtt.open(sys.mqttUrl);
  raw.send({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: false,
    keepalive: 30,
    clientId: 'dev-impatient',
    username: 'dev-impatient',
    password: Buffer.from(password),
  });
  for (let i = 0; i < 200 && held.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
  expect(held.length).toBeGreaterThan(0);
  raw.destroy();
  await raw.closed;
  holding = false;
  for (const release of held.splice(0)) release();

  // The claim completes after the close; the broker retires it and keeps nothing.
  const settled = async () => {
    const keys = (await sys.kms.admin.deviceKeys('dev-impatient')).keys;
    return keys.some((k) => k.state === 'retired') && !keys.some((k) => k.state === 'claimed');
  };
  for (let i = 0; i < 200 && !((await settled()) && sys.broker.plugin.sessions === 0); i++)
    await new Promise((r) => setTimeout(r, 25));
  const keys = (await sys.kms.admin.deviceKeys('dev-impatient')).keys;
  expect(keys.filter((k) => k.state === 'retired').map((k) => k.direction)).toEqual(['down']);
  expect(keys.filter((k) => k.state === 'claimed')).toEqual([]);
  expect(sys.broker.plugin.sessions).toBe(0);
  expect(raw.received.filter((p) => p.cmd === 'connack')).toEqual([]);
  expect(sys.logs()).toContain('the connection closed during authentication');

  // The queued command was never touched: the next connection receives it, under that session's key.
  const received: string[] = [];
  const back = await sys.connectDevice(chip, { clean: false }, (c) =>
    c.on('message', (t, p) => received.push(Buffer.from(chip.openDownlink(p, t)).toString())),
  );
  for (let i = 0; i < 200 && received.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
  expect(received).toEqual(['queued']);
  await back.endAsync();
});
