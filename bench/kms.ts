// bench/kms: durable key claims per second over HTTP at 1, 16 and 64 concurrent clients, downlink (enc_keys) and
// uplink with proof of use (dec_keys), group commit vs one transaction per claim, and one-key claims carried many
// to a request by the bulk extension (POST /api/v1/bulk/claims), all measured in this run.
// Run: npm run bench:kms [-- --seconds 3 --keys-per-request 1 --api enc,dec]; --help lists the options.
import { fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { KmsClient } from '../kms-api/client.js';
import { keyIdFor, sealEnvelope } from '../protocol/index.js';
import { durableWriteMs } from './_durable-write.js';
import { jsonPost, load, type LoadResult } from './_http-load.js';
import { formatRate, table } from './_measure.js';

const USAGE = `npm run bench:kms [-- options]
  --seconds N               length of each measured run (default 3; a 1 s warm-up precedes each)
  --keys-per-request LIST   keys claimed per request, comma-separated (default 1,4)
  --concurrency LIST        concurrent keep-alive clients, comma-separated (default 1,16,64)
  --api LIST                enc (downlink, enc_keys), dec (uplink with proof of use, dec_keys); default enc,dec
  --bulk-items LIST         one-key enc_keys claims per bulk request, comma-separated (default 16,64; 0: none)
  --pipelining N            requests in flight on each client connection (default 1: one client waits for its answer)
  --profile-kms DIR         write a V8 CPU profile of the group-commit key service process to DIR (node --cpu-prof)
A short run: npm run bench:kms -- --seconds 1 --keys-per-request 1 --concurrency 16`;

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    'keys-per-request': { type: 'string', default: '1,4' },
    concurrency: { type: 'string', default: '1,16,64' },
    api: { type: 'string', default: 'enc,dec' },
    'bulk-items': { type: 'string', default: '16,64' },
    'profile-kms': { type: 'string' },
    pipelining: { type: 'string', default: '1' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
type Api = 'enc' | 'dec';
const seconds = Number(values.seconds);
const pipelining = Number(values.pipelining);
const keysPerRequest = values['keys-per-request'].split(',').map(Number);
const levels = values.concurrency.split(',').map(Number);
const apis = values.api.split(',') as Api[];
const bulkItems = values['bulk-items']
  .split(',')
  .map(Number)
  .filter((n) => n > 0);
if (!apis.every((a) => a === 'enc' || a === 'dec')) throw new Error(`--api: enc and/or dec, not ${values.api}`);
const BIN = fileURLToPath(new URL('../cli/bin.js', import.meta.url));
const ADMIN = 'bench-admin-token';
const DEVICE = 'bench-device';
/** The topic and payload of the envelope each uplink claim carries as its proof: one small telemetry message. */
const TOPIC = `devices/${DEVICE}/up/telemetry`;
const PAYLOAD = new TextEncoder().encode('{"t":21.5,"h":40.2,"seq":1}');
const TARGET_RATE = 15_000;
const TARGET_RATIO = 3;

interface Server {
  url: string;
  broker: string;
  /** The raw uplink keys, 16 bytes each by key index (as the device's chip holds them), and the next unused one. */
  uplink: Buffer;
  nextUp: number;
  /** The key service's data folder. */
  dataDir: string;
  /** CPU seconds the key service process has used so far (Linux: /proc), or undefined where unknown. */
  cpuSeconds(): number | undefined;
  stop(): void;
}

/** utime + stime of a process from /proc/<pid>/stat, in seconds (USER_HZ is 100 on Linux). */
function cpuSecondsOf(pid: number | undefined): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // fields 14 and 15 of proc(5), after pid and comm
  } catch {
    return undefined;
  }
}

/** Registers and commits `count` keys of one direction from index `first`, in batches of at most 4096. */
async function fill(admin: KmsClient, first: number, count: number, direction: 'up' | 'down', keys?: Buffer) {
  for (let from = 0; from < count; from += 4096) {
    const n = Math.min(4096, count - from);
    const batch = `${direction}-${from}`;
    await admin.registerBatch(DEVICE, {
      batch_id: batch,
      keys: Array.from({ length: n }, (_, i) => ({
        key_index: first + from + i,
        direction,
        key: (keys ? keys.subarray((from + i) * 16, (from + i + 1) * 16) : randomBytes(16)).toString('base64'),
      })),
    });
    await admin.commitBatch(DEVICE, batch);
  }
}

async function startServer(
  name: string,
  claimBatchMax: number,
  keys: { up: number; down: number },
  profileDir?: string,
): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), `qkey-bench-kms-${name}-`));
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ claimBatchMax, logLevel: 'warn', maxKeysPerRequest: 64 }));
  const proc = spawn(
    process.execPath,
    [
      ...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []),
      BIN,
      'kms',
      '--init',
      '--port',
      '0',
      '--data',
      join(dir, 'data'),
      '--config',
      config,
    ],
    {
      env: { ...process.env, QKEY_ADMIN_TOKEN: ADMIN },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    proc.once('exit', (code) => reject(new Error(`kms exited ${code}`)));
  });
  const admin = new KmsClient(url, { token: ADMIN });
  await admin.registerDevice(DEVICE);
  // Uplink keys take indices [0, up), downlink keys the ones after.
  const uplink = randomBytes(16 * keys.up);
  await fill(admin, 0, keys.up, 'up', uplink);
  await fill(admin, keys.up, keys.down, 'down');
  const { client_secret } = await admin.registerBroker('bench-broker');
  const { access_token } = await admin.clientToken('bench-broker', client_secret);
  return {
    url,
    broker: access_token,
    uplink,
    nextUp: 0,
    dataDir: join(dir, 'data'),
    cpuSeconds: () => cpuSecondsOf(proc.pid),
    stop() {
      proc.kill('SIGTERM');
      setTimeout(() => rmSync(dir, { recursive: true, force: true }), 500).unref();
    },
  };
}

/**
 * Each request claims the next `perRequest` uplink keys, each with its proof of use: an envelope the device sealed
 * under it (docs/KMS-API.md "Proof of use"), as a broker sends it. Built while the run goes, one request at a time.
 */
function decRequests(server: Server, host: string, port: number, perRequest: number): () => Buffer {
  return () => {
    const key_IDs = Array.from({ length: perRequest }, () => {
      const i = server.nextUp++;
      // Past the provisioned uplink keys the index names a downlink key or none: refused, counted as a failure.
      const key = i * 16 < server.uplink.length ? server.uplink.subarray(i * 16, i * 16 + 16) : randomBytes(16);
      const envelope = sealEnvelope(PAYLOAD, {
        key,
        keyIndex: i,
        seq: 1,
        deviceId: DEVICE,
        topic: TOPIC,
        direction: 'up',
      });
      return {
        key_ID: keyIdFor(DEVICE, i),
        key_ID_extension: {
          qkey_proof: { envelope: Buffer.from(envelope).toString('base64'), topic: TOPIC, direction: 'up' },
        },
      };
    });
    return jsonPost(
      host,
      port,
      `/api/v1/keys/${DEVICE}/dec_keys`,
      {
        key_IDs,
        key_IDs_extension: { qkey_session_id: 'bench' },
      },
      { authorization: `Bearer ${server.broker}` },
    );
  };
}

interface Measured {
  /** Keys claimed per second. */
  rate: number;
  /** The key service's CPU seconds per key (from /proc), undefined where unknown. */
  cpuPerKey: number | undefined;
  /** The load client's own CPU microseconds per request. */
  clientCpu: number;
  errors: number;
  failures: Record<number, number>;
}

/** Runs the load client against `server` and counts `keysPerOk` keys for each 2xx answer. */
async function measure(
  server: Pick<Server, 'url' | 'cpuSeconds'>,
  request: Buffer | (() => Buffer),
  concurrency: number,
  keysPerOk: number,
  runSeconds: number,
): Promise<Measured> {
  const { hostname, port } = new URL(server.url);
  const cpuBefore = server.cpuSeconds();
  const r: LoadResult = await load(hostname, Number(port), request, concurrency, runSeconds, pipelining);
  const cpuAfter = server.cpuSeconds();
  const keys = r.ok * keysPerOk;
  const cpuPerKey =
    cpuBefore === undefined || cpuAfter === undefined || keys === 0 ? undefined : (cpuAfter - cpuBefore) / keys;
  return {
    rate: keys / r.seconds,
    cpuPerKey,
    clientCpu: r.clientCpuPerRequest,
    errors: r.failed,
    failures: r.failures,
  };
}

/** Claims keys from `concurrency` keep-alive connections for `seconds`. */
async function run(
  server: Server,
  api: Api,
  concurrency: number,
  perRequest: number,
  runSeconds = seconds,
): Promise<Measured> {
  const { hostname, port } = new URL(server.url);
  const req =
    api === 'enc'
      ? jsonPost(
          hostname,
          Number(port),
          `/api/v1/keys/${DEVICE}/enc_keys`,
          { number: perRequest, size: 128, extension_mandatory: [{ qkey_session_id: 'bench' }] },
          { authorization: `Bearer ${server.broker}` },
        )
      : decRequests(server, hostname, Number(port), perRequest);
  return measure(server, req, concurrency, perRequest, runSeconds);
}

/**
 * One-key downlink claims, `items` to a bulk request (each item its own claim, answered on its own); keys claimed per
 * second. Every item succeeds while the pool lasts (the pools are sized for it), so a 200 counts `items` keys.
 */
async function runBulk(server: Server, concurrency: number, items: number, runSeconds = seconds) {
  const { hostname, port } = new URL(server.url);
  const item = {
    SAE_ID: DEVICE,
    enc_keys: { number: 1, size: 128, extension_mandatory: [{ qkey_session_id: 'bench' }] },
  };
  const req = jsonPost(
    hostname,
    Number(port),
    '/api/v1/bulk/claims',
    { claims: Array.from({ length: items }, () => item) },
    { authorization: `Bearer ${server.broker}` },
  );
  return measure(server, req, concurrency, items, runSeconds);
}

/** Requests per second the key service answers on a trivial route (/healthz): the ceiling for one-key requests. */
async function ceiling(server: Server, concurrency: number): Promise<Measured> {
  const { hostname } = new URL(server.url);
  return measure(server, Buffer.from(`GET /healthz HTTP/1.1\r\nhost: ${hostname}\r\n\r\n`), concurrency, 1, seconds);
}

/**
 * Requests per second a bare node:http server (bench/_http-floor.ts, its own process like the key service) answers
 * with the same load client: what any Node HTTP service can reach on this machine, whatever it does per request.
 */
async function nodeHttpFloor(concurrency: number): Promise<Measured> {
  const child = fork(fileURLToPath(new URL('./_http-floor.js', import.meta.url)), [], { stdio: 'inherit' });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (p) => resolve(Number(p)));
      child.once('exit', (code) => reject(new Error(`_http-floor exited ${code}`)));
    });
    const server = { url: `http://127.0.0.1:${port}`, cpuSeconds: () => cpuSecondsOf(child.pid) };
    const req = Buffer.from(`GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`);
    await measure(server, req, concurrency, 1, 1); // warm-up
    return await measure(server, req, concurrency, 1, seconds);
  } finally {
    child.disconnect();
  }
}

// Up to 20,000 requests/s (above the node:http floor measured here) for a 1 s warm-up and each measured run: a pool
// that ran dry would turn the last runs into errors (KMS_ERR_POOL_EMPTY, or unknown uplink keys), not measurements.
const keysPerRequestSum = keysPerRequest.reduce((a, b) => a + b, 0);
const bulkSum = bulkItems.reduce((a, b) => a + b, 0);
const estimate = Math.ceil(
  20_000 * (keysPerRequestSum + (bulkSum > 0 ? 4 : 0)) * (seconds + 1) * levels.length + 50_000,
);
const pools = (n: number) => ({ up: apis.includes('dec') ? n : 0, down: apis.includes('enc') ? n : 0 });
console.log(
  `bench/kms: ${seconds} s per run; provisioning up to ${estimate} keys per pool and server (once per run)...`,
);
const grouped = await startServer('group', 512, pools(estimate), values['profile-kms']);
// One transaction per claim runs at a tenth of group commit or less: a quarter of the keys is plenty.
const single = await startServer('single', 1, pools(Math.ceil(estimate / 4)));
const fmt = (r: { rate: number; errors: number; failures?: Record<number, number> }) =>
  `${formatRate(r.rate)}${
    r.errors
      ? ` (${r.errors} failed: ${Object.entries(r.failures ?? {})
          .map(([s, n]) => `${n} x HTTP ${s === '0' ? 'connection closed' : s}`)
          .join(', ')})`
      : ''
  }`;
const results: Array<{
  api: Api;
  perRequest: number;
  clients: number;
  group: number;
  single: number;
  cpuPerKey: number | undefined;
  floor: number;
  healthz: number;
}> = [];
const micros = (seconds: number | undefined) => (seconds === undefined ? '-' : `${(seconds * 1e6).toFixed(0)} µs`);
try {
  const rows = [
    [
      'api',
      'keys/request',
      'clients',
      'node:http floor (req/s)',
      '/healthz (req/s)',
      'group commit',
      'server CPU/key',
      'load client CPU/req',
      'one tx per claim',
      'ratio',
    ],
  ];
  const floors = new Map<number, Measured>();
  for (const c of levels) floors.set(c, await nodeHttpFloor(c));
  for (const perRequest of keysPerRequest) {
    for (const c of levels) {
      const floor = floors.get(c)!;
      const ceil = await ceiling(grouped, c);
      for (const api of apis) {
        await run(grouped, api, c, perRequest, 1); // warm-up
        const g = await run(grouped, api, c, perRequest);
        const s = await run(single, api, c, perRequest);
        results.push({
          api,
          perRequest,
          clients: c,
          group: g.rate,
          single: s.rate,
          cpuPerKey: g.cpuPerKey,
          floor: floor.rate,
          healthz: ceil.rate,
        });
        const name = api === 'enc' ? 'enc_keys' : 'dec_keys + proof';
        rows.push([
          name,
          String(perRequest),
          String(c),
          `${formatRate(floor.rate)} (${micros(floor.cpuPerKey)})`,
          `${formatRate(ceil.rate)} (${micros(ceil.cpuPerKey)})`,
          fmt(g),
          micros(g.cpuPerKey),
          `${g.clientCpu.toFixed(0)} µs`,
          fmt(s),
          `${(g.rate / s.rate).toFixed(2)}x`,
        ]);
      }
    }
  }
  console.log(
    `\ndurable key claims per second (over HTTP, claim committed with synchronous=FULL before the response; ` +
      `in brackets: server CPU per request)\n${table(rows)}`,
  );
  // Each client waits for its claim's commit, so claims/s <= clients x requests in flight / commit time.
  const commitMs = durableWriteMs(dirname(grouped.dataDir));
  console.log(
    `\ndurable write (16 KiB + fdatasync) on the key store's file system: median ${commitMs.toFixed(2)} ms, so at most ` +
      levels
        .map((c) => `${formatRate((c * pipelining * 1000) / commitMs)} one-key claims at ${c} client(s)`)
        .join(', ') +
      ` (each answer waits for its commit)`,
  );
  if (bulkItems.length > 0 && apis.includes('enc')) {
    const bulkRows = [
      ['claims/bulk request', 'clients', 'bulk, group commit', 'server CPU/key', 'vs enc_keys, 1 key/request'],
    ];
    for (const c of levels) {
      const one = results.find((r) => r.api === 'enc' && r.perRequest === 1 && r.clients === c);
      for (const items of bulkItems) {
        await runBulk(grouped, c, items, 1); // warm-up
        const b = await runBulk(grouped, c, items);
        bulkRows.push([
          String(items),
          String(c),
          fmt(b),
          micros(b.cpuPerKey),
          one ? `${(b.rate / one.group).toFixed(2)}x` : '-',
        ]);
      }
    }
    console.log(
      `\none-key downlink claims through POST /api/v1/bulk/claims (same run, same server)\n${table(bulkRows)}`,
    );
  }
} finally {
  grouped.stop();
  single.stop();
}
const top = Math.max(...levels);
for (const r of results.filter((x) => x.clients === top && x.api === 'enc')) {
  const okRate = r.group >= TARGET_RATE;
  const okRatio = r.group / r.single >= TARGET_RATIO;
  console.log(
    `enc_keys, ${r.perRequest} key(s)/request, ${top} clients: ${formatRate(r.group)} (target >= ${TARGET_RATE}: ${okRate ? 'PASS' : 'FAIL'}), ` +
      `${(r.group / r.single).toFixed(2)}x one tx per claim (target >= ${TARGET_RATIO}x: ${okRatio ? 'PASS' : 'FAIL'}); ` +
      `${((100 * r.group) / r.perRequest / r.floor).toFixed(0)}% of the node:http floor's requests/s, ` +
      `${((100 * r.group) / r.perRequest / r.healthz).toFixed(0)}% of /healthz's`,
  );
}
// The same-run baseline for uplink claims: a downlink claim does the same transaction without a proof to open.
// Server CPU per key varies less with the machine's other load than the rates do.
for (const d of results.filter((x) => x.api === 'dec')) {
  const e = results.find((x) => x.api === 'enc' && x.perRequest === d.perRequest && x.clients === d.clients);
  if (!e) continue;
  const cpu =
    d.cpuPerKey !== undefined && e.cpuPerKey !== undefined
      ? `, server CPU per key ${micros(d.cpuPerKey)} vs ${micros(e.cpuPerKey)} (${(d.cpuPerKey / e.cpuPerKey).toFixed(2)}x)`
      : '';
  console.log(
    `dec_keys with proof of use vs enc_keys, ${d.perRequest} key(s)/request, ${d.clients} clients, group commit: ` +
      `${(d.group / e.group).toFixed(2)}x the rate${cpu}`,
  );
}
