// bench/scale: a connect storm of 10,000 devices (login, connect, key claims), then each device publishing once per
// second for 60 s, against a key service and a broker in their own processes. Run: npm run bench:scale
// [-- --devices 10000 --seconds 60 --concurrency 200 --profile-broker DIR]. Devices and the application are lean
// MQTT clients (bench/_lean-mqtt.ts) that keep their keys in memory: at this scale the chip file is the device's
// business, not what the storm measures, and the load generator must cost less than the broker it loads.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { DeliveryLedger, percentile } from '../device-sim/stats.js';
import { KmsClient } from '../key-service/client.js';
import { EnvelopeKey, loginProof, sealEnvelope } from '../protocol/index.js';
import { LeanMqttClient } from './_lean-mqtt.js';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '10000' },
    seconds: { type: 'string', default: '60' },
    concurrency: { type: 'string', default: '200' },
    'profile-broker': { type: 'string' },
    /** Extra Node.js flags for the broker process, space-separated (for example --max-semi-space-size=64). */
    'broker-node-flags': { type: 'string', default: '' },
    /** Give the broker a core of its own (taskset); --no-pin leaves scheduling to the kernel. */
    pin: { type: 'boolean', default: true },
    /** Write one CSV row per second of the phase (rate, latency, broker CPU, event-loop lag, GC) to this file. */
    timeline: { type: 'string' },
  },
});
const N = Number(values.devices);
const SECONDS = Number(values.seconds);
const CONCURRENCY = Number(values.concurrency);
const BIN = fileURLToPath(new URL('../cli/bin.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'qkey-bench-scale-'));
const ADMIN = 'scale-admin';
const env = { ...process.env, QKEY_ADMIN_TOKEN: ADMIN, QKEY_KMS_LOG_LEVEL: 'error', QKEY_BROKER_LOG_LEVEL: 'error' };

function start(
  args: string[],
  ready: RegExp,
  nodeFlags: string[] = [],
): Promise<{ pid: number; line: string; stop(): void }> {
  const p = spawn(process.execPath, ['--max-old-space-size=4096', ...nodeFlags, BIN, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = ready.exec(out);
      if (m) resolve({ pid: p.pid!, line: m[1]!, stop: () => p.kill('SIGTERM') });
    });
    p.once('exit', (code) => reject(new Error(`${args[0]} exited ${code}`)));
  });
}

/** CPU seconds a process has used so far in user and kernel mode, from /proc/<pid>/stat (ticks of 1/100 s). */
const cpuTimes = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { user: Number(fields[11]) / 100, system: Number(fields[12]) / 100 };
};
const cpuSeconds = (pid: number) => {
  const t = cpuTimes(pid);
  return t.user + t.system;
};

const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;

async function pool<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/**
 * The system under test gets a core of its own, the load generator and the key service (idle once the storm is
 * over) share the rest: otherwise the kernel may run the generator on the broker's core, and the latency
 * measured is the generator's. Every thread of each process is pinned (taskset -a).
 */
const cpus = availableParallelism();
const pinning = values.pin && cpus >= 2 && existsSync('/usr/bin/taskset');
function pin(pid: number, cpuList: string): void {
  if (pinning) execFileSync('taskset', ['-a', '-p', '-c', cpuList, String(pid)], { stdio: 'ignore' });
}
const brokerCpu = String(cpus - 1);
const othersCpus = cpus > 2 ? `0-${cpus - 2}` : '0';
pin(process.pid, othersCpus);

const kms = await start(['kms', '--port', '0', '--data', dir], /listening on (\S+)/);
pin(kms.pid, othersCpus);
writeFileSync(join(dir, 'broker.json'), JSON.stringify({ revocationPollMs: 2000 }));
const broker = await start(
  ['broker', '--port', '0', '--http-port', '0', '--kms', kms.line, '--data', dir, '--config', join(dir, 'broker.json')],
  /listening: (.*)$/m,
  [
    ...(values['profile-broker'] ? ['--cpu-prof', `--cpu-prof-dir=${values['profile-broker']}`] : []),
    ...values['broker-node-flags'].split(' ').filter(Boolean),
  ],
);
pin(broker.pid, brokerCpu);
const mqttUrl = /mqtt (mqtt:\/\/[^,\s]+)/.exec(broker.line)![1]!;
const brokerHttp = /http (http:\/\/[^,\s]+)/.exec(broker.line)![1]!;

/**
 * Samples the broker once a second into a CSV file: CPU (user, kernel), the event loop's worst delay in that second
 * and young-generation GC time. Latency by second of sending goes to <file>.latency.csv at the end.
 */
function startTimeline(file: string): NodeJS.Timeout {
  writeFileSync(file, 'second,broker_user_pct,broker_kernel_pct,broker_loop_max_ms,broker_minor_gc_ms\n');
  let last = { at: performance.now(), cpu: cpuTimes(broker.pid), gc: 0 };
  let second = 0;
  return setInterval(() => {
    void brokerMetrics().then((text) => {
      const now = { at: performance.now(), cpu: cpuTimes(broker.pid), gc: gcSeconds(text).minor ?? 0 };
      const pct = (d: number) => ((100 * d) / ((now.at - last.at) / 1000)).toFixed(0);
      const loopMax = Number(/^broker_nodejs_eventloop_lag_max_seconds (\S+)/m.exec(text)?.[1] ?? 0) * 1000;
      const row = [
        second++,
        pct(now.cpu.user - last.cpu.user),
        pct(now.cpu.system - last.cpu.system),
        loopMax.toFixed(0),
        last.gc ? ((now.gc - last.gc) * 1000).toFixed(0) : '',
      ];
      appendFileSync(file, `${row.join(',')}\n`);
      last = now;
    });
  }, 1000);
}

/** Seconds of garbage collection by kind, from the broker's Prometheus metrics (prom-client default metrics). */
function gcSeconds(metrics: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of metrics.matchAll(/^broker_nodejs_gc_duration_seconds_sum\{kind="(\w+)"\} ([\d.e-]+)/gm))
    out[m[1]!] = Number(m[2]);
  return out;
}
const brokerMetrics = async () => (await fetch(`${brokerHttp}/metrics`)).text();
const brokerGc = async () => gcSeconds(await brokerMetrics());
const admin = new KmsClient(kms.line, { token: ADMIN, timeoutMs: 60_000 });
const clients: LeanMqttClient[] = [];
try {
  console.log(
    `bench/scale: ${N} devices, ${SECONDS} s at 1 msg/s each, connect concurrency ${CONCURRENCY}; ${pinning ? `broker pinned to CPU ${brokerCpu}, key service and load generator to CPU ${othersCpus}` : 'no CPU pinning'}`,
  );
  interface Dev {
    id: string;
    loginKey: Buffer;
    key: EnvelopeKey;
    seq: number;
    client?: LeanMqttClient;
  }
  const devs: Dev[] = Array.from({ length: N }, (_, i) => ({
    id: `scale-${String(i).padStart(5, '0')}`,
    loginKey: randomBytes(16),
    key: new EnvelopeKey(randomBytes(16)),
    seq: 0,
  }));
  const raw = new Map<string, Buffer>();
  let t = performance.now();
  await pool(devs, 32, async (d) => {
    const up = randomBytes(16);
    raw.set(d.id, up);
    d.key = new EnvelopeKey(up);
    await admin.registerDevice(d.id);
    await admin.registerBatch(d.id, {
      batch_id: `${d.id}-b`,
      login_key: d.loginKey.toString('base64'),
      keys: [
        { key_index: 0, direction: 'up', key: up.toString('base64') },
        ...[1, 2, 3].map((k) => ({
          key_index: k,
          direction: 'down' as const,
          key: randomBytes(16).toString('base64'),
        })),
      ],
    });
    await admin.commitBatch(d.id, `${d.id}-b`);
  });
  console.log(`provisioned ${N} devices in ${((performance.now() - t) / 1000).toFixed(1)} s (not part of the storm)`);

  const { client_secret } = await admin.registerApp('scale-app');
  const app = await LeanMqttClient.connect(mqttUrl, {
    clientId: 'scale-app',
    username: 'scale-app',
    password: (await admin.clientToken('scale-app', client_secret)).access_token,
  });
  clients.push(app);
  const ledger = new DeliveryLedger();
  /** Latencies by 10-second window of the telemetry phase, to tell a start-up burst from steady state. */
  const windows: number[][] = [];
  /** The same by second, for --timeline. */
  const seconds: number[][] = [];
  let phaseStart = Infinity;
  /** Later messages only: each device's first message also waits for the broker to claim its uplink key. */
  const steady = new DeliveryLedger();
  app.onMessage = (_topic, payload) => {
    const m = JSON.parse(payload.toString()) as { d: string; s: number; t: number };
    ledger.record(m.d, m.s, Date.now() - m.t);
    const w = Math.floor((m.t - phaseStart) / 10_000);
    if (w >= 0) (windows[w] ??= []).push(Date.now() - m.t);
    if (values.timeline && m.t >= phaseStart)
      (seconds[Math.floor((m.t - phaseStart) / 1000)] ??= []).push(Date.now() - m.t);
    if (m.s > 0) steady.record(m.d, m.s, Date.now() - m.t);
  };
  await app.subscribe('devices/+/up/#', 1);

  const kmsBefore = await (await fetch(`${kms.line}/metrics`)).text();
  const delivered = (text: string) => Number(/^kms_keys_delivered_total (\d+)/m.exec(text)?.[1] ?? 0);
  t = performance.now();
  let failures = 0;
  await pool(devs, CONCURRENCY, async (d) => {
    try {
      const { challenge } = await admin.challenge(d.id);
      const mac = Buffer.from(loginProof(d.loginKey, d.id, Buffer.from(challenge, 'base64'))).toString('base64');
      const { access_token } = await admin.deviceToken(d.id, challenge, mac);
      d.client = await LeanMqttClient.connect(mqttUrl, {
        clientId: d.id,
        username: d.id,
        password: access_token,
        timeoutMs: 60_000,
      });
      clients.push(d.client);
    } catch {
      failures++;
    }
  });
  const stormSeconds = (performance.now() - t) / 1000;
  const claimsAtConnect = delivered(await (await fetch(`${kms.line}/metrics`)).text()) - delivered(kmsBefore);
  console.log(
    `connect storm: ${N - failures}/${N} connected in ${stormSeconds.toFixed(1)} s (target: all within 60 s: ${failures === 0 && stormSeconds <= 60 ? 'PASS' : 'FAIL'}), ${(claimsAtConnect / stormSeconds).toFixed(0)} key claims/s`,
  );

  const online = devs.filter((d) => d.client);
  const sent = new Map<string, number>();
  const topicOf = (id: string) => `devices/${id}/up/telemetry`;
  const tick = (d: Dev) => {
    const body = Buffer.from(JSON.stringify({ d: d.id, s: d.seq, t: Date.now() }));
    const env = sealEnvelope(body, {
      key: d.key,
      keyIndex: 0,
      seq: d.seq,
      deviceId: d.id,
      topic: topicOf(d.id),
      direction: 'up',
    });
    d.seq++;
    sent.set(d.id, d.seq);
    d.client!.publish(topicOf(d.id), Buffer.from(env));
  };
  const cpuBefore = { broker: cpuTimes(broker.pid), kms: cpuSeconds(kms.pid), here: process.cpuUsage() };
  const gcBefore = await brokerGc();
  phaseStart = Date.now();
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  t = performance.now();
  // Each device publishes once per second, spread evenly across the second.
  const slices = 50;
  let slice = 0;
  const timer = setInterval(() => {
    const s = slice++ % slices;
    for (let i = s; i < online.length; i += slices) tick(online[i]!);
  }, 1000 / slices);
  const timeline = values.timeline ? startTimeline(values.timeline) : undefined;
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  clearInterval(timer);
  clearInterval(timeline);
  const phase = (performance.now() - t) / 1000;
  const here = process.cpuUsage(cpuBefore.here);
  const share = (s: number) => `${((100 * s) / phase).toFixed(0)}%`;
  const brokerUsed = cpuTimes(broker.pid);
  const brokerUser = brokerUsed.user - cpuBefore.broker.user;
  const brokerSystem = brokerUsed.system - cpuBefore.broker.system;
  console.log(
    `CPU during the telemetry phase (100% = one core): broker ${share(brokerUser + brokerSystem)} (user ${share(brokerUser)}, kernel ${share(brokerSystem)}), key service ${share(cpuSeconds(kms.pid) - cpuBefore.kms)}, devices + app (this process) ${share((here.user + here.system) / 1e6)}`,
  );
  loopDelay.disable();
  const gcAfter = await brokerGc();
  const gc = Object.entries(gcAfter)
    .map(([kind, sec]) => `${kind} ${((sec - (gcBefore[kind] ?? 0)) * 1000).toFixed(0)} ms`)
    .join(', ');
  console.log(
    `broker GC during the phase: ${gc}; load generator event-loop delay p99 ${(loopDelay.percentile(99) / 1e6).toFixed(0)} ms, max ${(loopDelay.max / 1e6).toFixed(0)} ms`,
  );
  await new Promise((r) => setTimeout(r, 5000)); // drain
  if (values.timeline) {
    const rows = seconds.map((l, i) => {
      const sorted = [...(l ?? [])].sort((a, b) => a - b);
      return [i, sorted.length, percentile(sorted, 50), percentile(sorted, 99), sorted.at(-1) ?? 0].join(',');
    });
    writeFileSync(`${values.timeline}.latency.csv`, `second,messages,p50_ms,p99_ms,max_ms\n${rows.join('\n')}\n`);
  }
  const lat = ledger.latency();
  const total = [...sent.values()].reduce((a, b) => a + b, 0);
  const lost = ledger.lost(sent);
  console.log(
    `telemetry: ${total} sent, ${ledger.received} received, lost ${lost}, duplicated ${ledger.duplicated} (target: zero loss at QoS 1: ${lost === 0 ? 'PASS' : 'FAIL'})`,
  );
  console.log(
    `latency, all messages: p50 ${lat.p50} ms, p99 ${lat.p99} ms, max ${lat.max} ms (target: p99 < 100 ms: ${lat.p99 < 100 ? 'PASS' : 'FAIL'})`,
  );
  console.log(
    `p99 by 10 s window of the phase: ${windows
      .map(
        (w) =>
          `${percentile(
            [...w].sort((a, b) => a - b),
            99,
          )} ms`,
      )
      .join(', ')}`,
  );
  const st = steady.latency();
  console.log(
    `latency, after each device's first message (uplink key already claimed): p50 ${st.p50} ms, p99 ${st.p99} ms, max ${st.max} ms`,
  );
  console.log(
    `memory: broker ${rssMiB(broker.pid).toFixed(0)} MiB RSS, key service ${rssMiB(kms.pid).toFixed(0)} MiB RSS (with ${online.length} connected devices)`,
  );
} finally {
  for (const c of clients) c.end();
  broker.stop();
  kms.stop();
  setTimeout(() => rmSync(dir, { recursive: true, force: true }), 1000);
}
