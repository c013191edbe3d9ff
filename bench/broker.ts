// bench/broker: plain Aedes and each QKey broker configuration (in memory, durable embedded, ...) under the same
// load in the same run: uplink device-to-application messages/s (QoS 0 and 1, 64 B and 1 KiB), downlink fan-out
// from one application to 1,000 devices, QoS 1 commands to devices with persistent sessions, and memory per
// connected device session. Run: npm run bench:broker [-- --devices 1000 --messages 20000 --sessions 100]
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Aedes } from 'aedes';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { type BrokerOverrides, loadBrokerConfig } from '../broker/config.js';
import { startBroker } from '../broker/server.js';
import { startLocalSystem } from '../device-sim/local-system.js';
import { EnvelopeKey, loginProof, sealEnvelope } from '../protocol/index.js';
import { formatRate, median, table } from './_measure.js';
import { type BenchDevice, provisionBenchDevice } from './_provision.js';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '1000' },
    messages: { type: 'string', default: '40000' },
    rounds: { type: 'string', default: '5' },
    sessions: { type: 'string', default: '100' },
    'per-session': { type: 'string', default: '100' },
    /**
     * The Redis of the "QKey over Redis" configuration; by default a redis-server started here (append-only file,
     * fsync always) on a free port in the bench's temporary folder, if one is installed.
     */
    redis: { type: 'string' },
    /** Leave "QKey over Redis" out: a round of it takes most of a run's time, a cost a store-tuning loop skips. */
    'no-redis': { type: 'boolean', default: false },
    /** Which measurements to run, comma-separated: uplink, fanout (with memory), persistent. */
    only: { type: 'string', default: 'uplink,fanout,persistent' },
  },
});
const ONLY = new Set(values.only.split(','));
const FANOUT_DEVICES = Number(values.devices);
const MESSAGES = Number(values.messages);
const ROUNDS = Number(values.rounds);
const SESSIONS = Number(values.sessions);
const PER_SESSION = Number(values['per-session']);
/** Ratios against plain Aedes, and durable against in memory for QoS 1 to persistent sessions. */
const TARGETS = { uplink: 0.8, fanout: 0.6, memoryKiB: 20, durablePersistent: 0.7 };

const dir = mkdtempSync(join(tmpdir(), 'qkey-bench-broker-'));
const BROKER = { maxPayload: 1 << 20 } satisfies BrokerOverrides;
const local = await startLocalSystem(dir, {
  brokerId: 'bench-broker',
  kms: { maxKeysPerRequest: 16 },
  broker: { ...BROKER, persistence: 'memory' },
});
const { admin } = local;

/**
 * The QKey configurations measured beside plain Aedes, each a broker on the same key service. The first is the
 * in-memory one (the reference of the durability targets). Another deployment adds itself here: a name, and the
 * broker configuration keys that make it.
 */
const CONFIGURATIONS: Array<{ name: string; overrides: BrokerOverrides }> = [
  { name: 'QKey in memory', overrides: { persistence: 'memory' } },
  { name: 'QKey durable (embedded)', overrides: { persistence: 'sqlite' } },
];
const redis = values['no-redis']
  ? undefined
  : values.redis
    ? { url: values.redis, stop: () => undefined }
    : await startRedisServer();
if (redis) CONFIGURATIONS.push({ name: 'QKey over Redis', overrides: { redis: redis.url } });
else if (values['no-redis']) console.log('QKey over Redis: not measured (--no-redis)');
else console.log('QKey over Redis: not measured (no redis-server installed, and no --redis <url>)');

/** A redis-server of its own for this run, or undefined when none is installed. */
async function startRedisServer(): Promise<{ url: string; stop(): void } | undefined> {
  const bin = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((b) => existsSync(b));
  if (!bin) return undefined;
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', ''];
  const p = spawn(bin, [...args, '--appendonly', 'yes', '--appendfsync', 'always'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    p.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('Ready to accept connections')) resolve();
    });
    p.once('exit', () => reject(new Error(`redis-server exited:\n${out}`)));
  });
  return { url: `redis://127.0.0.1:${port}`, stop: () => p.kill('SIGKILL') };
}

interface Measured {
  name: string;
  url: string;
  secure: boolean;
  close(): Promise<void>;
}

const brokers: Measured[] = [];
for (const [i, c] of CONFIGURATIONS.entries()) {
  const brokerId = `bench-broker-${i}`;
  const { client_secret } = await admin.registerBroker(brokerId);
  const running = await startBroker(
    loadBrokerConfig(
      {
        ...BROKER,
        mqtt: { port: 0 },
        http: null,
        kmsUrl: local.kms.url,
        brokerId,
        brokerSecret: client_secret,
        dataDir: dir,
        ...c.overrides,
      },
      { env: {} },
    ),
    { logger: pino({ level: 'silent' }) },
  );
  brokers.push({ name: c.name, url: running.urls.mqtt!, secure: true, close: () => running.close() });
}
const plainAedes = new Aedes();
await plainAedes.listen();
const plainServer: Server = createServer((s) => plainAedes.handle(s));
await new Promise<void>((r) => plainServer.listen(0, '127.0.0.1', r));
const plainUrl = `mqtt://127.0.0.1:${(plainServer.address() as { port: number }).port}`;

/** Registers devices with one uplink key (index 0), some downlink keys and a login key. */
async function provision(prefix: string, n: number, down: number): Promise<BenchDevice[]> {
  const out: BenchDevice[] = [];
  for (let i = 0; i < n; i++) out.push(await provisionBenchDevice(admin, `${prefix}-${i}`, down));
  return out;
}

async function tokenFor(d: BenchDevice): Promise<string> {
  const { challenge } = await admin.challenge(d.id);
  const mac = Buffer.from(loginProof(d.loginKey, d.id, Buffer.from(challenge, 'base64'))).toString('base64');
  return (await admin.deviceToken(d.id, challenge, mac)).access_token;
}

async function connect(url: string, d: BenchDevice, secure: boolean, clean = true): Promise<MqttClient> {
  const auth = secure ? { username: d.id, password: await tokenFor(d) } : {};
  return mqtt.connectAsync(url, { clientId: d.id, reconnectPeriod: 0, clean, ...auth });
}

async function appClient(url: string, secure: boolean, id: string): Promise<MqttClient> {
  if (!secure) return mqtt.connectAsync(url, { clientId: id, reconnectPeriod: 0 });
  const { client_secret: s } = await admin.registerApp(id, {
    publish: ['devices/+/down/#'],
    subscribe: ['devices/+/up/#'],
  });
  const { access_token } = await admin.clientToken(id, s);
  return mqtt.connectAsync(url, { clientId: `${id}/bench`, username: id, password: access_token, reconnectPeriod: 0 });
}

/** Device-to-application messages per second: `MESSAGES` publishes (pre-sealed for QKey) until the app has them all. */
async function uplink(url: string, secure: boolean, size: number, qos: 0 | 1, tag: string): Promise<number> {
  const [dev] = await provision(`up-${tag}`, 1, 2);
  const device = await connect(url, dev!, secure);
  const app = await appClient(url, secure, `app-up-${tag}`);
  const topic = `devices/${dev!.id}/up/t`;
  await app.subscribeAsync('devices/+/up/#', { qos });
  const key = new EnvelopeKey(dev!.uplink);
  const body = randomBytes(size);
  const payloads = Array.from({ length: MESSAGES }, (_, seq) =>
    secure
      ? Buffer.from(sealEnvelope(body, { key, keyIndex: 0, seq, deviceId: dev!.id, topic, direction: 'up' }))
      : body,
  );
  let received = 0;
  const done = new Promise<void>((resolve) => app.on('message', () => ++received === MESSAGES && resolve()));
  const start = performance.now();
  for (let i = 0; i < MESSAGES; i++) device.publish(topic, payloads[i]!, { qos });
  await Promise.race([done, new Promise((r) => setTimeout(r, 60_000))]);
  const rate = received / ((performance.now() - start) / 1000);
  await device.endAsync(true);
  await app.endAsync(true);
  return rate;
}

/** One application sends one command to each of `devices` devices; deliveries per second. */
async function fanout(
  url: string,
  secure: boolean,
  devs: BenchDevice[],
  clients: MqttClient[],
  tag: string,
): Promise<number> {
  const app = await appClient(url, secure, `app-fan-${tag}`);
  let received = 0;
  const done = new Promise<void>((resolve) => {
    for (const c of clients) c.on('message', () => ++received === devs.length && resolve());
  });
  const start = performance.now();
  for (const d of devs) app.publish(`devices/${d.id}/down/cmd`, 'ping', { qos: 1 });
  await Promise.race([done, new Promise((r) => setTimeout(r, 60_000))]);
  const rate = received / ((performance.now() - start) / 1000);
  for (const c of clients) c.removeAllListeners('message');
  await app.endAsync(true);
  return rate;
}

/**
 * QoS 1 commands to devices holding persistent sessions (clean session 0): one application sends `PER_SESSION`
 * commands to each of the connected `clients`; each is stored in the session's queue, delivered, acknowledged and
 * removed. Deliveries per second until every device has all of its commands.
 */
async function persistentQos1(url: string, secure: boolean, devs: BenchDevice[], clients: MqttClient[], tag: string) {
  const app = await appClient(url, secure, `app-pers-${tag}`);
  const total = devs.length * PER_SESSION;
  let received = 0;
  const done = new Promise<void>((resolve) => {
    for (const c of clients) c.on('message', () => ++received === total && resolve());
  });
  const start = performance.now();
  for (let k = 0; k < PER_SESSION; k++)
    for (const d of devs) app.publish(`devices/${d.id}/down/cmd`, 'set 42', { qos: 1 });
  await Promise.race([done, new Promise((r) => setTimeout(r, 120_000))]);
  const rate = received / ((performance.now() - start) / 1000);
  for (const c of clients) c.removeAllListeners('message');
  await app.endAsync(true);
  return rate;
}

/** Heap, external and array-buffer memory after garbage has had a few chances to go (finalizers run late). */
async function heap(): Promise<number> {
  for (let i = 0; i < 4; i++) {
    (globalThis as { gc?: () => void }).gc?.();
    await new Promise((r) => setTimeout(r, 100));
  }
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

console.log(
  `bench/broker: ${MESSAGES} uplink messages per run, ${FANOUT_DEVICES} devices for fan-out, ${SESSIONS} persistent sessions x ${PER_SESSION} commands, median of ${ROUNDS} rounds${(globalThis as { gc?: unknown }).gc ? '' : ' (run with --expose-gc for steadier memory figures)'}`,
);
const plain: Measured = { name: 'plain Aedes', url: plainUrl, secure: false, close: async () => undefined };
const all = [plain, ...brokers];
const header = (what: string) => [what, ...all.map((b) => b.name), ...brokers.map((b) => `${b.name} / plain`)];
/** The median of each broker's rounds, round 0 (JIT and path warm-up) not counted, brokers interleaved per round. */
async function measure(run: (b: Measured, tag: string) => Promise<number>, warmup = true): Promise<number[]> {
  const rates: number[][] = all.map(() => []);
  for (let r = warmup ? 0 : 1; r <= ROUNDS; r++)
    for (const [i, b] of all.entries()) {
      const rate = await run(b, `${i}r${r}`);
      if (r > 0) rates[i]!.push(rate);
    }
  return rates.map(median);
}
const row = (what: string, rates: number[]) => [
  what,
  ...rates.map((r) => `${formatRate(r)} msg`),
  ...rates.slice(1).map((r) => `${(r / rates[0]!).toFixed(2)}x`),
];

const uplinkRows = [header('uplink')];
const uplinkRatios: number[] = [];
const UPLINK_CASES = [
  [64, 0],
  [64, 1],
  [1024, 0],
  [1024, 1],
] as const;
for (const [size, qos] of ONLY.has('uplink') ? UPLINK_CASES : []) {
  const rates = await measure((b, tag) => uplink(b.url, b.secure, size, qos, `${size}q${qos}b${tag}`));
  // The target compares like with like: QKey in memory against plain Aedes in memory. The durable and Redis
  // configurations store or route every message, which plain Aedes here does not; their ratios are reported.
  uplinkRatios.push(rates[1]! / rates[0]!);
  uplinkRows.push(row(`${size} B, QoS ${qos}`, rates));
}
if (ONLY.has('uplink')) console.log(`\n${table(uplinkRows)}`);

/** Fan-out and memory: the same number of devices on each broker, memory measured as they connect. */
async function fanoutAndMemory(): Promise<{ fanRatio: number; extraKiB: number }> {
  const heaps: number[] = [await heap()];
  const devsOf: BenchDevice[][] = [];
  const clientsOf: MqttClient[][] = [];
  for (const [i, b] of all.entries()) {
    const devs = await provision(`fan-${i}`, FANOUT_DEVICES, 4);
    const clients = [];
    for (const d of devs) clients.push(await connect(b.url, d, b.secure));
    await Promise.all(clients.map((c, k) => c.subscribeAsync(`devices/${devs[k]!.id}/down/#`, { qos: 1 })));
    devsOf.push(devs);
    clientsOf.push(clients);
    // Memory of plain Aedes and of the in-memory QKey broker (the first two).
    if (i < 2) heaps.push(await heap());
  }
  const perPlain = (heaps[1]! - heaps[0]!) / FANOUT_DEVICES;
  const perQkey = (heaps[2]! - heaps[1]!) / FANOUT_DEVICES;
  const fan = await measure((b, tag) => {
    const i = all.indexOf(b);
    return fanout(b.url, b.secure, devsOf[i]!, clientsOf[i]!, tag);
  }, false);
  console.log(`\n${table([header('downlink fan-out'), row(`1 app -> ${FANOUT_DEVICES} devices, QoS 1`, fan)])}`);
  await Promise.all(clientsOf.flat().map((c) => c.endAsync(true)));
  const extraKiB = (perQkey - perPlain) / 1024;
  console.log(
    `\nmemory per connected device (broker + clients in this process): plain ${(perPlain / 1024).toFixed(1)} KiB, QKey ${(perQkey / 1024).toFixed(1)} KiB, extra ${extraKiB.toFixed(1)} KiB`,
  );
  return { fanRatio: fan[1]! / fan[0]!, extraKiB };
}

/** QoS 1 to persistent sessions on each broker; each configuration's ratio to the in-memory QKey broker. */
async function persistentSessions(): Promise<Array<{ name: string; ratio: number }>> {
  const devsOf: BenchDevice[][] = [];
  const clientsOf: MqttClient[][] = [];
  for (const [i, b] of all.entries()) {
    const devs = await provision(`pers-${i}`, SESSIONS, 4);
    const clients = [];
    for (const d of devs) {
      const c = await connect(b.url, d, b.secure, false);
      await c.subscribeAsync(`devices/${d.id}/down/#`, { qos: 1 });
      clients.push(c);
    }
    devsOf.push(devs);
    clientsOf.push(clients);
  }
  const pers = await measure((b, tag) => {
    const i = all.indexOf(b);
    return persistentQos1(b.url, b.secure, devsOf[i]!, clientsOf[i]!, tag);
  });
  console.log(
    `\n${table([header('persistent sessions'), row(`1 app -> ${SESSIONS} sessions x ${PER_SESSION}, QoS 1`, pers)])}`,
  );
  await Promise.all(clientsOf.flat().map((c) => c.endAsync(true)));
  const ratios = brokers.slice(1).map((b, k) => ({ name: b.name, ratio: pers[k + 2]! / pers[1]! }));
  for (const d of ratios)
    console.log(`${d.name} / ${brokers[0]!.name}, QoS 1 to persistent sessions: ${d.ratio.toFixed(2)}x`);
  return ratios;
}

const fanMem = ONLY.has('fanout') ? await fanoutAndMemory() : undefined;
const durable = ONLY.has('persistent')
  ? (await persistentSessions()).find((d) => d.name === 'QKey durable (embedded)')
  : undefined;
const verdict = (ok: boolean | undefined) => (ok === undefined ? 'not measured' : ok ? 'PASS' : 'FAIL');
const ok = {
  uplink: uplinkRatios.length ? Math.min(...uplinkRatios) >= TARGETS.uplink : undefined,
  fanout: fanMem && fanMem.fanRatio >= TARGETS.fanout,
  memory: fanMem && fanMem.extraKiB <= TARGETS.memoryKiB,
  durable: durable && durable.ratio >= TARGETS.durablePersistent,
};
const figure = (v: number | undefined, unit: string) => (v === undefined ? 'not measured' : `${v.toFixed(2)}${unit}`);
console.log(
  `\ntarget: uplink >= ${TARGETS.uplink}x plain Aedes (QKey in memory, worst case ${figure(uplinkRatios.length ? Math.min(...uplinkRatios) : undefined, 'x')}): ${verdict(ok.uplink)}`,
);
console.log(
  `target: fan-out >= ${TARGETS.fanout}x plain Aedes (in memory ${figure(fanMem?.fanRatio, 'x')}): ${verdict(ok.fanout)}`,
);
console.log(
  `target: <= ${TARGETS.memoryKiB} KiB extra per device session (${figure(fanMem?.extraKiB, ' KiB')}): ${verdict(ok.memory)}`,
);
console.log(
  `target: durable (embedded) >= ${TARGETS.durablePersistent}x in memory for QoS 1 to persistent sessions (${figure(durable?.ratio, 'x')}): ${verdict(ok.durable)}`,
);

await new Promise<void>((r) => plainServer.close(() => r()));
await new Promise<void>((r) => plainAedes.close(() => r()));
for (const b of brokers) await b.close();
redis?.stop();
await local.close();
rmSync(dir, { recursive: true, force: true });
process.exitCode = Object.values(ok).every((v) => v !== false) ? 0 : 1;
