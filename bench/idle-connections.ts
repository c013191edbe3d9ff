// bench/idle-connections: broker memory per unauthenticated connection, QKey vs plain Aedes in the same run. A
// child process opens N TCP connections that send nothing (idle), then N that each send a partial CONNECT just under
// maxPreConnectBytes (the most a client can make the broker hold before authenticating). The clients live in the
// child, so the deltas are the broker's. Run: npm run bench:idle [-- --connections 2000]
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Aedes } from 'aedes';
import { BROKER_DEFAULTS } from '../broker/config.js';
import { startLocalSystem } from '../device-sim/local-system.js';
import { table } from './_measure.js';

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '2000' },
    // Child mode: open connections to this port, each sending this many bytes of a CONNECT.
    open: { type: 'string' },
    send: { type: 'string', default: '0' },
  },
});
const N = Number(values.connections);

if (values.open) {
  // Child: open N connections, report, hold them until told to go.
  const port = Number(values.open);
  const send = Number(values.send);
  // A CONNECT that declares maxPreConnectBytes in all and stops `send` bytes into it: the broker must hold them.
  const total = BROKER_DEFAULTS.maxPreConnectBytes;
  const partial = Buffer.alloc(send, 0x41);
  partial.set([0x10, 0x80 | ((total - 3) & 0x7f), (total - 3) >> 7].slice(0, send));
  const sockets: Socket[] = [];
  for (let i = 0; i < N; i++) {
    await new Promise<void>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => {
        if (send > 0) s.write(partial);
        resolve();
      });
      s.once('error', reject);
      sockets.push(s);
    });
  }
  process.send!('open');
  process.once('message', () => {
    for (const s of sockets) s.destroy();
    process.exit(0);
  });
} else {
  await main();
}

/**
 * Heap and external (Buffers) after garbage has had a few chances to go. RSS is no per-connection measure here:
 * after the warm-up round the process reuses the pages it already has.
 */
async function memory(): Promise<number> {
  for (let i = 0; i < 4; i++) {
    (globalThis as { gc?: () => void }).gc?.();
    await new Promise((r) => setTimeout(r, 100));
  }
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

/** Opens N connections from a child process and returns the memory they cost this process, per connection. */
async function measure(held: () => Promise<number>, port: number, send: number): Promise<number> {
  const before = await memory();
  const child = fork(fileURLToPath(import.meta.url), [
    '--open',
    String(port),
    '--connections',
    String(N),
    '--send',
    String(send),
  ]);
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`client process exited (${code})`)));
  });
  // The partial CONNECTs must have been read before memory is measured.
  while ((await held()) < N) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 500));
  const after = await memory();
  const gone = new Promise((r) => child.once('exit', r));
  child.send('close');
  await gone;
  while ((await held()) > 0) await new Promise((r) => setTimeout(r, 50));
  return (after - before) / N;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'qkey-bench-idle-'));
  const local = await startLocalSystem(dir, { brokerId: 'bench-idle' });
  const qkeyPort = Number(new URL(local.broker.urls.mqtt!).port);
  const plain = new Aedes();
  await plain.listen();
  const plainServer = createServer((s) => plain.handle(s));
  await new Promise<void>((r) => plainServer.listen(0, '127.0.0.1', r));
  const plainPort = (plainServer.address() as { port: number }).port;

  const plainHeld = () => new Promise<number>((r) => plainServer.getConnections((_e, n) => r(n)));
  // startBroker keeps its net.Server to itself; count the connections it hands to Aedes instead.
  let qkeyOpen = 0;
  const handle = local.broker.aedes.handle.bind(local.broker.aedes);
  local.broker.aedes.handle = (conn: Parameters<typeof handle>[0], req?: Parameters<typeof handle>[1]) => {
    qkeyOpen++;
    conn.once('close', () => qkeyOpen--);
    return handle(conn, req);
  };
  const qkeyHeld = () => Promise.resolve(qkeyOpen);

  const partialBytes = BROKER_DEFAULTS.maxPreConnectBytes - 1;
  console.log(
    `bench/idle-connections: ${N} unauthenticated TCP connections per case, opened by a child process; broker memory per connection (V8 heap + external)${(globalThis as { gc?: unknown }).gc ? '' : ' (run with --expose-gc for steadier figures)'}`,
  );
  const rows = [['case', 'plain Aedes', 'QKey', 'extra']];
  for (const [label, send] of [
    ['idle (nothing sent)', 0],
    [`partial CONNECT, ${partialBytes} B sent`, partialBytes],
  ] as const) {
    // Warm-up round for each broker, not counted.
    await measure(plainHeld, plainPort, send);
    await measure(qkeyHeld, qkeyPort, send);
    const p = await measure(plainHeld, plainPort, send);
    const q = await measure(qkeyHeld, qkeyPort, send);
    const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
    rows.push([label, kib(p), kib(q), kib(q - p)]);
  }
  console.log('\n' + table(rows));
  console.log(
    `\nQKey refuses a connection once it has sent more than maxPreConnectBytes (${BROKER_DEFAULTS.maxPreConnectBytes} B) before CONNECT is accepted; plain Aedes buffers up to 268,435,455 B per packet until its connect timeout.`,
  );
  plainServer.close();
  await new Promise<void>((r) => plain.close(() => r()));
  await local.close();
  rmSync(dir, { recursive: true, force: true });
}
