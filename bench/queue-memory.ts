// bench/queue-memory: broker memory of one offline persistent session holding its full queue of QoS 1 messages
// (the default bound, 1,000 messages of 1 KiB), then flooded 10x past it; the same flood without the bound for
// comparison. Aedes with its in-memory persistence and the bound (broker/queue-bound.ts), in this process; the
// messages are published through aedes.publish, so no client buffers count. Run: npm run bench:queue
// [-- --size 1024 --flood 10]
import { connect, createServer, type Server } from 'node:net';
import { parseArgs } from 'node:util';
import { Aedes } from 'aedes';
import { generate, parser, type Packet } from 'mqtt-packet';
import { DEFAULT_QUEUE_LIMITS, QueueBound, type QueueLimits } from '../broker/queue-bound.js';
import { table } from './_measure.js';

const { values } = parseArgs({
  options: { size: { type: 'string', default: '1024' }, flood: { type: 'string', default: '10' } },
});
const SIZE = Number(values.size);
const BOUND = DEFAULT_QUEUE_LIMITS.maxMessages;
const FLOOD = Number(values.flood) * BOUND;

/** V8 heap + Buffers outside it, and the resident set, after garbage has had a few chances to go. */
async function memory(): Promise<{ live: number; rss: number }> {
  for (let i = 0; i < 4; i++) {
    (globalThis as { gc?: () => void }).gc?.();
    await new Promise((r) => setTimeout(r, 50));
  }
  const m = process.memoryUsage();
  return { live: m.heapUsed + m.arrayBuffers, rss: m.rss };
}

/** A broker: Aedes, the bound with `limits`, a loopback listener. */
async function broker(limits: QueueLimits): Promise<{ aedes: Aedes; bound: QueueBound; server: Server }> {
  const aedes = new Aedes();
  await aedes.listen();
  const bound = new QueueBound(limits);
  bound.attach(aedes);
  const server = createServer((s) => aedes.handle(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { aedes, bound, server };
}

/** Connects with clean session off, subscribes at QoS 1 and disconnects: a persistent session, offline. */
async function offlineSession(server: Server, clientId: string, topic: string): Promise<void> {
  const socket = connect((server.address() as { port: number }).port, '127.0.0.1');
  const p = parser();
  const next = (cmd: string) =>
    new Promise<void>((resolve) => p.on('packet', (packet: Packet) => packet.cmd === cmd && resolve()));
  socket.on('data', (d: Buffer) => p.parse(d));
  const connack = next('connack');
  socket.write(
    generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: false, keepalive: 0, clientId }),
  );
  await connack;
  const suback = next('suback');
  socket.write(generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos: 1 }] } as Packet));
  await suback;
  socket.end(generate({ cmd: 'disconnect' }));
  await new Promise((r) => socket.once('close', r));
}

/** Publishes `n` messages, 100 at a time: the flood's own transient buffers stay small next to the queue. */
async function publish(aedes: Aedes, topic: string, n: number): Promise<void> {
  const one = () =>
    new Promise<void>((resolve, reject) =>
      aedes.publish(
        { cmd: 'publish', topic, payload: Buffer.alloc(SIZE, 0x61), qos: 1, retain: false, dup: false },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
  for (let done = 0; done < n; done += 100) await Promise.all(Array.from({ length: Math.min(100, n - done) }, one));
}

async function main(): Promise<void> {
  console.log(
    `bench/queue-memory: one offline persistent session, QoS 1 messages of ${SIZE} B; memory is V8 heap + Buffers (live) and RSS${(globalThis as { gc?: unknown }).gc ? '' : ' (run with --expose-gc for steadier figures)'}`,
  );
  const fmt = (b: number) => `${(b / 1024 / 1024).toFixed(2)} MiB`;
  const rows = [['case', 'queued', 'live', 'per message', 'RSS']];
  const row = (label: string, queued: number, d: { live: number; rss: number }) =>
    rows.push([label, String(queued), fmt(d.live), `${((d.live / Math.max(queued, 1)) | 0) + ' B'}`, fmt(d.rss)]);

  const b = await broker(DEFAULT_QUEUE_LIMITS);
  await offlineSession(b.server, 'dev', 'q/dev');
  // Warm-up: a few messages in and out of another session, so that code and structures exist before measuring.
  await offlineSession(b.server, 'warm', 'q/warm');
  await publish(b.aedes, 'q/warm', 100);
  const start = await memory();
  await publish(b.aedes, 'q/dev', BOUND);
  const full = await memory();
  row(`full queue (${BOUND} published)`, b.bound.queued('dev').messages, {
    live: full.live - start.live,
    rss: full.rss - start.rss,
  });
  await publish(b.aedes, 'q/dev', FLOOD - BOUND);
  const flooded = await memory();
  row(`flooded (${FLOOD} published, ${b.bound.dropped.messages} dropped)`, b.bound.queued('dev').messages, {
    live: flooded.live - start.live,
    rss: flooded.rss - start.rss,
  });

  const u = await broker({ maxMessages: 0, maxBytes: 0 });
  await offlineSession(u.server, 'dev', 'q/dev');
  const uStart = await memory();
  await publish(u.aedes, 'q/dev', FLOOD);
  const uFlooded = await memory();
  row(`no bound (${FLOOD} published)`, u.bound.queued('dev').messages, {
    live: uFlooded.live - uStart.live,
    rss: uFlooded.rss - uStart.rss,
  });
  console.log('\n' + table(rows));
  console.log(
    '\nlive = what the queue holds after garbage collection. RSS also counts the young generation V8 grows under any burst of allocation, garbage included, and keeps: no per-session figure.',
  );
  for (const x of [b, u]) {
    x.server.close();
    await new Promise<void>((r) => x.aedes.close(() => r()));
  }
}

await main();
