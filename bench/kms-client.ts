// bench/kms-client: the key-service client's own cost per request (CPU of the calling process, and requests per
// second), Node's fetch against KmsClient's pooled keep-alive connections, measured in the same run against one
// small HTTP server in its own process answering as the key service does (a JSON key container).
// Run: npm run bench:kms-client [-- --requests 20000 --concurrency 1,64 --connections 16].
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { KmsClient } from '../kms-api/client.js';
import { table } from './_measure.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '1,64' },
    connections: { type: 'string', default: '16' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(`npm run bench:kms-client [-- options]
  --requests N         requests per measurement (default 20000; a warm-up of a tenth precedes each)
  --concurrency LIST   requests in flight, comma-separated (default 1,64)
  --connections LIST   KmsClient keep-alive connections, comma-separated (default 16)`);
  process.exit(0);
}
const REQUESTS = Number(values.requests);
const levels = values.concurrency.split(',').map(Number);
const connectionCounts = values.connections.split(',').map(Number);

/** The peer: answers every POST with a one-key container, like dec_keys, after reading the body. */
const SERVER = `
const body = JSON.stringify({ keys: [{ key_ID: '00000000-0000-4000-8000-000000000000', key: 'AAAAAAAAAAAAAAAAAAAAAA==', key_ID_extension: { qkey_key_index: 0 } }] });
const s = require('node:http').createServer((req, res) => {
  req.resume();
  req.on('end', () => res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body));
});
s.keepAliveTimeout = 60000;
s.listen(0, '127.0.0.1', () => console.log('port ' + s.address().port));`;

async function startServer(): Promise<{ url: string; stop(): void }> {
  const p = spawn(process.execPath, ['-e', SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<string>((resolve) =>
    p.stdout!.on('data', (c: Buffer) => {
      const m = /port (\d+)/.exec(c.toString());
      if (m) resolve(m[1]!);
    }),
  );
  return { url: `http://127.0.0.1:${port}`, stop: () => p.kill() };
}

type Call = () => Promise<unknown>;

/** Runs `n` calls with `concurrency` in flight; returns requests/s and this process's CPU microseconds each. */
async function measure(call: Call, n: number, concurrency: number): Promise<{ rate: number; cpuUs: number }> {
  let next = 0;
  const worker = async () => {
    while (next++ < n) await call();
  };
  const cpu = process.cpuUsage();
  const t = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - t) / 1000;
  const used = process.cpuUsage(cpu);
  return { rate: n / seconds, cpuUs: (used.user + used.system) / n };
}

const server = await startServer();
const PATH = '/api/v1/keys/dev-1/dec_keys';
const BODY = { key_IDs: [{ key_ID: '00000000-0000-4000-8000-000000000000' }] };
/** Today's request as it was made before the pooled client: Node's fetch, a fresh timer per request. */
const viaFetch: Call = async () => {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 10_000);
  try {
    const res = await fetch(`${server.url}${PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer x' },
      body: JSON.stringify(BODY),
      signal: abort.signal,
    });
    JSON.parse(await res.text());
  } finally {
    clearTimeout(timer);
  }
};
try {
  const rows: string[][] = [];
  for (const concurrency of levels) {
    await measure(viaFetch, REQUESTS / 10, concurrency);
    const f = await measure(viaFetch, REQUESTS, concurrency);
    rows.push([String(concurrency), 'fetch', '', f.rate.toFixed(0), f.cpuUs.toFixed(1), '1.00']);
    for (const connections of connectionCounts) {
      const client = new KmsClient(server.url, { token: 'x', connections });
      const viaPool: Call = () => client.request('POST', PATH, BODY);
      await measure(viaPool, REQUESTS / 10, concurrency);
      const p = await measure(viaPool, REQUESTS, concurrency);
      rows.push([
        String(concurrency),
        'KmsClient',
        String(connections),
        p.rate.toFixed(0),
        p.cpuUs.toFixed(1),
        (p.cpuUs / f.cpuUs).toFixed(2),
      ]);
    }
  }
  console.log(`bench/kms-client: ${REQUESTS} requests each, load average ${(await import('node:os')).loadavg()[0]}`);
  console.log(
    table([['in flight', 'client', 'connections', 'requests/s', 'client CPU us/request', 'CPU vs fetch'], ...rows]),
  );
} finally {
  server.stop();
}
