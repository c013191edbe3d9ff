// bench/broker: plain Aedes and the QKey broker under the same load in the same run: uplink device-to-application
// messages/s (QoS 0 and 1, 64 B and 1 KiB), downlink fan-out from one application to 1,000 devices, and memory
// per connected device session. Run: npm run bench:broker [-- --devices 1000 --messages 20000]
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Aedes } from 'aedes';
import mqtt, { type MqttClient } from 'mqtt';
import { startLocalSystem } from '../device-sim/local-system.js';
import { EnvelopeKey, loginProof, sealEnvelope } from '../protocol/index.js';
import { formatRate, median, table } from './_measure.js';
import { type BenchDevice, provisionBenchDevice } from './_provision.js';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '1000' },
    messages: { type: 'string', default: '40000' },
    rounds: { type: 'string', default: '5' },
  },
});
const FANOUT_DEVICES = Number(values.devices);
const MESSAGES = Number(values.messages);
const ROUNDS = Number(values.rounds);
const TARGETS = { uplink: 0.8, fanout: 0.6, memoryKiB: 20 };

const dir = mkdtempSync(join(tmpdir(), 'qkey-bench-broker-'));
const local = await startLocalSystem(dir, {
  brokerId: 'bench-broker',
  kms: { maxKeysPerRequest: 16 },
  broker: { maxPayload: 1 << 20 },
});
const { admin, broker: qkey } = local;
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

async function connect(url: string, d: BenchDevice, secure: boolean): Promise<MqttClient> {
  const auth = secure ? { username: d.id, password: await tokenFor(d) } : {};
  return mqtt.connectAsync(url, { clientId: d.id, reconnectPeriod: 0, ...auth });
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
  `bench/broker: ${MESSAGES} uplink messages per run, ${FANOUT_DEVICES} devices for fan-out, median of ${ROUNDS} rounds${(globalThis as { gc?: unknown }).gc ? '' : ' (run with --expose-gc for steadier memory figures)'}`,
);
const rows = [['uplink', 'plain Aedes', 'QKey', 'ratio']];
const uplinkRatios: number[] = [];
for (const [size, qos] of [
  [64, 0],
  [64, 1],
  [1024, 0],
  [1024, 1],
] as const) {
  const p: number[] = [];
  const q: number[] = [];
  // Round 0 warms up the JIT and both brokers' paths for this size and QoS; it is not counted.
  for (let r = 0; r <= ROUNDS; r++) {
    const rp = await uplink(plainUrl, false, size, qos, `p${size}${qos}${r}`);
    const rq = await uplink(qkey.urls.mqtt!, true, size, qos, `q${size}${qos}${r}`);
    if (r > 0) {
      p.push(rp);
      q.push(rq);
    }
  }
  const ratio = median(q) / median(p);
  uplinkRatios.push(ratio);
  rows.push([
    `${size} B, QoS ${qos}`,
    `${formatRate(median(p))} msg`,
    `${formatRate(median(q))} msg`,
    `${ratio.toFixed(2)}x`,
  ]);
}
console.log(`\n${table(rows)}`);

// Fan-out and memory: connect the same number of devices to each broker, measuring memory as they connect.
const devsPlain = await provision('fan-p', FANOUT_DEVICES, 4);
const devsQkey = await provision('fan-q', FANOUT_DEVICES, 4);
const before = await heap();
const plainClients = [];
for (const d of devsPlain) plainClients.push(await connect(plainUrl, d, false));
await Promise.all(plainClients.map((c, i) => c.subscribeAsync(`devices/${devsPlain[i]!.id}/down/#`, { qos: 1 })));
const afterPlain = await heap();
const qkeyClients = [];
for (const d of devsQkey) qkeyClients.push(await connect(qkey.urls.mqtt!, d, true));
await Promise.all(qkeyClients.map((c, i) => c.subscribeAsync(`devices/${devsQkey[i]!.id}/down/#`, { qos: 1 })));
const afterQkey = await heap();
const perPlain = (afterPlain - before) / FANOUT_DEVICES;
const perQkey = (afterQkey - afterPlain) / FANOUT_DEVICES;
const fp: number[] = [];
const fq: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  fp.push(await fanout(plainUrl, false, devsPlain, plainClients, `p${r}`));
  fq.push(await fanout(qkey.urls.mqtt!, true, devsQkey, qkeyClients, `q${r}`));
}
const fanRatio = median(fq) / median(fp);
console.log(
  `\n${table([
    ['downlink fan-out', 'plain Aedes', 'QKey', 'ratio'],
    [
      `1 app -> ${FANOUT_DEVICES} devices, QoS 1`,
      `${formatRate(median(fp))} msg`,
      `${formatRate(median(fq))} msg`,
      `${fanRatio.toFixed(2)}x`,
    ],
  ])}`,
);
const extraKiB = (perQkey - perPlain) / 1024;
console.log(
  `\nmemory per connected device (broker + clients in this process): plain ${(perPlain / 1024).toFixed(1)} KiB, QKey ${(perQkey / 1024).toFixed(1)} KiB, extra ${extraKiB.toFixed(1)} KiB`,
);
const ok = {
  uplink: Math.min(...uplinkRatios) >= TARGETS.uplink,
  fanout: fanRatio >= TARGETS.fanout,
  memory: extraKiB <= TARGETS.memoryKiB,
};
console.log(
  `\ntarget: uplink >= ${TARGETS.uplink}x plain Aedes (worst case ${Math.min(...uplinkRatios).toFixed(2)}x): ${ok.uplink ? 'PASS' : 'FAIL'}`,
);
console.log(
  `target: fan-out >= ${TARGETS.fanout}x plain Aedes (${fanRatio.toFixed(2)}x): ${ok.fanout ? 'PASS' : 'FAIL'}`,
);
console.log(
  `target: <= ${TARGETS.memoryKiB} KiB extra per device session (${extraKiB.toFixed(1)} KiB): ${ok.memory ? 'PASS' : 'FAIL'}`,
);

await Promise.all([...plainClients, ...qkeyClients].map((c) => c.endAsync(true)));
await new Promise<void>((r) => plainServer.close(() => r()));
await new Promise<void>((r) => plainAedes.close(() => r()));
await local.close();
rmSync(dir, { recursive: true, force: true });
process.exitCode = ok.uplink && ok.fanout && ok.memory ? 0 : 1;
