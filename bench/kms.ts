// bench/kms: durable key claims per second over HTTP at 1, 16 and 64 concurrent clients, group commit vs
// one transaction per claim, both measured in this run. Run: npm run bench:kms [-- --seconds 3 --keys-per-request 1]
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { KmsClient } from '../kms-api/client.js';
import { jsonPost, load } from './_http-load.js';
import { formatRate, table } from './_measure.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    'keys-per-request': { type: 'string', default: '1,4' },
    concurrency: { type: 'string', default: '1,16,64' },
  },
});
const seconds = Number(values.seconds);
const keysPerRequest = values['keys-per-request'].split(',').map(Number);
const levels = values.concurrency.split(',').map(Number);
const BIN = fileURLToPath(new URL('../cli/bin.js', import.meta.url));
const ADMIN = 'bench-admin-token';
const TARGET_RATE = 10_000;
const TARGET_RATIO = 3;

interface Server {
  url: string;
  broker: string;
  stop(): void;
}

async function startServer(name: string, claimBatchMax: number, keys: number): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), `qkey-bench-kms-${name}-`));
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ claimBatchMax, logLevel: 'warn', maxKeysPerRequest: 64 }));
  const proc = spawn(
    process.execPath,
    [BIN, 'kms', '--init', '--port', '0', '--data', join(dir, 'data'), '--config', config],
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
  await admin.registerDevice('bench-device');
  for (let from = 0, b = 0; from < keys; from += 4096, b++) {
    const n = Math.min(4096, keys - from);
    const batch = `b${b}`;
    await admin.registerBatch('bench-device', {
      batch_id: batch,
      keys: Array.from({ length: n }, (_, i) => ({
        key_index: from + i,
        direction: 'down' as const,
        key: randomBytes(16).toString('base64'),
      })),
    });
    await admin.commitBatch('bench-device', batch);
  }
  const { client_secret } = await admin.registerBroker('bench-broker');
  const { access_token } = await admin.clientToken('bench-broker', client_secret);
  return {
    url,
    broker: access_token,
    stop() {
      proc.kill('SIGTERM');
      setTimeout(() => rmSync(dir, { recursive: true, force: true }), 500).unref();
    },
  };
}

/** Claims downlink keys from `concurrency` keep-alive connections for `seconds`; returns keys claimed per second. */
async function run(
  server: Server,
  concurrency: number,
  perRequest: number,
  runSeconds = seconds,
): Promise<{ rate: number; errors: number; failures: Record<number, number> }> {
  const { hostname, port } = new URL(server.url);
  const req = jsonPost(
    hostname,
    Number(port),
    '/api/v1/keys/bench-device/enc_keys',
    { number: perRequest, size: 128, extension_mandatory: [{ qkey_session_id: 'bench' }] },
    { authorization: `Bearer ${server.broker}` },
  );
  const r = await load(hostname, Number(port), req, concurrency, runSeconds);
  return { rate: (r.ok * perRequest) / r.seconds, errors: r.failed, failures: r.failures };
}

/** Requests per second the HTTP stack serves for a trivial route: the ceiling for one-key requests. */
async function ceiling(server: Server, concurrency: number): Promise<number> {
  const { hostname, port } = new URL(server.url);
  const r = await load(
    hostname,
    Number(port),
    Buffer.from(`GET /healthz HTTP/1.1\r\nhost: ${hostname}\r\n\r\n`),
    concurrency,
    seconds,
  );
  return r.ok / r.seconds;
}

// Up to 8,000 requests/s (well above the measured HTTP ceiling) for a 1 s warm-up and each measured run: a pool
// that ran dry would turn the last runs into errors (KMS_ERR_POOL_EMPTY), not measurements.
const keysPerRequestSum = keysPerRequest.reduce((a, b) => a + b, 0);
const estimate = Math.ceil(8_000 * keysPerRequestSum * (seconds + 1) * levels.length + 50_000);
console.log(`bench/kms: ${seconds} s per run; provisioning up to ${estimate} keys per server (once per run)...`);
const grouped = await startServer('group', 512, estimate);
const single = await startServer('single', 1, Math.ceil(estimate / 2));
const fmt = (r: { rate: number; errors: number; failures?: Record<number, number> }) =>
  `${formatRate(r.rate)}${
    r.errors
      ? ` (${r.errors} failed: ${Object.entries(r.failures ?? {})
          .map(([s, n]) => `${n} x HTTP ${s === '0' ? 'connection closed' : s}`)
          .join(', ')})`
      : ''
  }`;
const results: Array<{ perRequest: number; clients: number; group: number; single: number }> = [];
try {
  const rows = [['keys/request', 'clients', 'HTTP ceiling (req/s)', 'group commit', 'one tx per claim', 'ratio']];
  for (const perRequest of keysPerRequest) {
    for (const c of levels) {
      await run(grouped, c, perRequest, 1); // warm-up
      const ceil = await ceiling(grouped, c);
      const g = await run(grouped, c, perRequest);
      const s = await run(single, c, perRequest);
      results.push({ perRequest, clients: c, group: g.rate, single: s.rate });
      rows.push([String(perRequest), String(c), formatRate(ceil), fmt(g), fmt(s), `${(g.rate / s.rate).toFixed(2)}x`]);
    }
  }
  console.log(
    `\ndurable key claims per second (enc_keys over HTTP, claim committed with synchronous=FULL before the response)\n${table(rows)}`,
  );
} finally {
  grouped.stop();
  single.stop();
}
const top = Math.max(...levels);
for (const r of results.filter((x) => x.clients === top)) {
  const okRate = r.group >= TARGET_RATE;
  const okRatio = r.group / r.single >= TARGET_RATIO;
  console.log(
    `${r.perRequest} key(s)/request, ${top} clients: ${formatRate(r.group)} (target >= ${TARGET_RATE}: ${okRate ? 'PASS' : 'FAIL'}), ` +
      `${(r.group / r.single).toFixed(2)}x one tx per claim (target >= ${TARGET_RATIO}x: ${okRatio ? 'PASS' : 'FAIL'})`,
  );
}
