// bench/scale: a connect storm of 10,000 devices (login, connect, key claims), then each device publishing once per
// second for 60 s, against a key service and a broker in their own processes; then the same telemetry load on
// Aedes without QKey as a baseline measured in the same run. Run: npm run bench:scale [-- --devices 10000
// --seconds 60 --rate 1 --concurrency 200 --warmup 0 --profile-broker DIR --profile-all --prelogin --pin-storm
// --timeline FILE --no-baseline --brokers N --redis URL; README lists the rest]. Devices and the application are
// lean MQTT clients (bench/_lean-mqtt.ts) that keep their keys in memory: at this scale the chip file is the
// device's business, not what the storm measures, and the load generator must cost less than the broker it loads.
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Session } from 'node:inspector/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { BROKER_DEFAULTS } from '../broker/config.js';
import { SINGLE_HOST_LOGIN_LIMITS } from '../device-sim/local-system.js';
import { DeliveryLedger, percentile } from '../device-sim/stats.js';
import { POOL_CENSUS_INTERVAL_MS } from '../key-service/metrics.js';
import { KmsClient } from '../kms-api/client.js';
import { ENVELOPE_OVERHEAD, EnvelopeKey, loginProof, SUITE_SM4_GCM, sealEnvelope } from '../protocol/index.js';
import { LeanMqttClient } from './_lean-mqtt.js';
import { brokerThreadProfile, mainThreadProfile, monotonicUs, topFunctions, windowShare } from './_profile-share.js';
import { provisionBenchDevice } from './_provision.js';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '10000' },
    seconds: { type: 'string', default: '60' },
    /** Messages per second per device (the target is defined at 1; lower rates find this machine's capacity). */
    rate: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '200' },
    'profile-broker': { type: 'string' },
    /**
     * Also profile the key service (DIR/kms) and the load generator (DIR/generator, the storm only): each process's
     * busy share during the storm and its most expensive functions, to tell which of the three sets the storm's pace.
     */
    'profile-all': { type: 'boolean', default: false },
    /** Extra Node.js flags for the broker process, space-separated (for example --max-semi-space-size=64). */
    'broker-node-flags': { type: 'string', default: '' },
    /** The broker's --semi-space (MiB; 0 = on the main thread with V8's default), passed through to qkey broker. */
    'broker-semi-space': { type: 'string' },
    /**
     * Seconds of telemetry before the measured phase, discarded (default 0: the phase starts cold right after the
     * storm, as the target is defined). Tells start-up costs (JIT, the storm's garbage) from steady state.
     */
    warmup: { type: 'string', default: '0' },
    /** Give the broker a core of its own (taskset); --no-pin leaves scheduling to the kernel. */
    pin: { type: 'boolean', default: true },
    /**
     * Keep the pinning during the connect storm too. By default the storm runs unpinned (every process on every
     * core, as the kernel schedules it) and the pinning starts with the telemetry phase: the broker thread is only
     * partly busy while devices connect, and the logins of the key service and the load generator would otherwise
     * queue on one core while the broker's idles.
     */
    'pin-storm': { type: 'boolean', default: false },
    /**
     * Log every device in before the timed storm (challenge, proof, token), so that the storm times the MQTT
     * connects alone; the login burst is timed and reported on its own.
     */
    prelogin: { type: 'boolean', default: false },
    /** Write one CSV row per second of the phase (rate, latency, broker CPU, event-loop lag, GC) to this file. */
    timeline: { type: 'string' },
    /**
     * Several brokers over one Redis (--brokers N --redis <url>): devices are dealt round-robin over the brokers, the
     * application connects to the first one, so (N-1)/N of the messages cross from one broker to another.
     */
    brokers: { type: 'string', default: '1' },
    redis: { type: 'string' },
    /** Afterwards, the same telemetry phase against Aedes without QKey (no authentication, no envelopes). */
    baseline: { type: 'boolean', default: true },
  },
  allowNegative: true,
});
const N = Number(values.devices);
const SECONDS = Number(values.seconds);
const RATE = Number(values.rate);
if (!(RATE > 0 && RATE <= 100)) throw new Error(`--rate must be a number of messages per second in (0, 100]`);
const CONCURRENCY = Number(values.concurrency);
const BROKERS = Number(values.brokers);
if (!(Number.isInteger(BROKERS) && BROKERS >= 1)) throw new Error('--brokers must be a whole number, at least 1');
if (BROKERS > 1 && !values.redis) throw new Error('--brokers above 1 needs --redis <url>: brokers share one Redis');
const BIN = fileURLToPath(new URL('../cli/bin.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'qkey-bench-scale-'));
const ADMIN = 'scale-admin';
const env = { ...process.env, QKEY_ADMIN_TOKEN: ADMIN, QKEY_KMS_LOG_LEVEL: 'error', QKEY_BROKER_LOG_LEVEL: 'error' };

function start(
  args: string[],
  ready: RegExp,
  nodeFlags: string[] = [],
  script = BIN,
): Promise<{ pid: number; line: string; stop(): void; exited: Promise<unknown> }> {
  const p = spawn(process.execPath, ['--max-old-space-size=4096', ...nodeFlags, script, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((r) => p.once('exit', r));
  return new Promise((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = ready.exec(out);
      if (m) resolve({ pid: p.pid!, line: m[1]!, stop: () => p.kill('SIGTERM'), exited });
    });
    p.once('exit', (code) => reject(new Error(`${args[0]} exited ${code}`)));
  });
}

/**
 * Per-core busy and total time of the whole machine so far, from /proc/stat (busy = all but idle and iowait): tells
 * whether the machine itself, not only the broker, was saturated.
 */
const machineCpu = () =>
  readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .filter((line) => /^cpu\d/.test(line))
    .map((line) => {
      const t = line.split(/\s+/).slice(1).map(Number);
      const total = t.reduce((a, b) => a + b, 0);
      return { busy: total - t[3]! - t[4]!, total };
    });
const busyShares = (before: ReturnType<typeof machineCpu>, after: ReturnType<typeof machineCpu>) =>
  after.map((a, i) => (a.busy - before[i]!.busy) / Math.max(1, a.total - before[i]!.total));

/** CPU seconds a process has used so far in user and kernel mode, from /proc/<pid>/stat (ticks of 1/100 s). */
const cpuTimes = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { user: Number(fields[11]) / 100, system: Number(fields[12]) / 100 };
};

/** A sorted copy, as percentile() expects. */
const ascending = (values: readonly number[]) => [...values].sort((a, b) => a - b);

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
const allCpus = `0-${cpus - 1}`;
function pin(pid: number, cpuList: string): void {
  if (pinning) execFileSync('taskset', ['-a', '-p', '-c', cpuList, String(pid)], { stdio: 'ignore' });
}
const brokerCpu = String(cpus - 1);
const othersCpus = cpus > 2 ? `0-${cpus - 2}` : '0';
pin(process.pid, othersCpus);

// Every simulated device logs in from this host: the key service gets single-host login limits.
writeFileSync(join(dir, 'kms.json'), JSON.stringify({ loginLimits: SINGLE_HOST_LOGIN_LIMITS }));
const profileAll = values['profile-all'] && values['profile-broker'] ? values['profile-broker'] : undefined;
const kms = await start(
  ['kms', '--init', '--port', '0', '--data', dir, '--config', join(dir, 'kms.json')],
  /listening on (\S+)/,
  profileAll ? ['--cpu-prof', `--cpu-prof-dir=${join(profileAll, 'kms')}`] : [],
);
pin(kms.pid, othersCpus);
writeFileSync(join(dir, 'broker.json'), JSON.stringify({ revocationPollMs: 2000 }));
const brokerNodes = [];
for (let i = 0; i < BROKERS; i++) {
  const node = await start(
    [
      'broker',
      ...['--port', '0', '--http-port', '0', '--kms', kms.line, '--data', dir, '--config', join(dir, 'broker.json')],
      ...(values.redis ? ['--redis', values.redis, '--broker-id', `scale-broker-${i}`] : []),
      ...(values['broker-semi-space'] === undefined ? [] : ['--semi-space', values['broker-semi-space']]),
    ],
    /listening: (.*)$/m,
    [
      ...(values['profile-broker'] ? ['--cpu-prof', `--cpu-prof-dir=${values['profile-broker']}`] : []),
      ...values['broker-node-flags'].split(' ').filter(Boolean),
    ],
  );
  // Several brokers share the broker's core: the load generator keeps the rest, as with one.
  pin(node.pid, brokerCpu);
  brokerNodes.push(node);
}
const broker = brokerNodes[0]!;
const mqttUrls = brokerNodes.map((b) => /mqtt (mqtt:\/\/[^,\s]+)/.exec(b.line)![1]!);
const mqttUrl = mqttUrls[0]!;
/** The redis-server's pid (INFO server), to count its CPU with the brokers'. */
const redisPid = values.redis ? await redisServerPid(values.redis) : undefined;
async function redisServerPid(url: string): Promise<number> {
  const { Redis } = await import('ioredis');
  const r = new Redis(url);
  try {
    return Number(/process_id:(\d+)/.exec(await r.info('server'))![1]);
  } finally {
    r.disconnect();
  }
}
const brokerHttp = /http (http:\/\/[^,\s]+)/.exec(broker.line)![1]!;

/**
 * Samples a broker once a second into a CSV file: CPU (user, kernel) and, from its metrics when it has them (the
 * QKey broker), the event loop's worst delay in that second and young-generation GC time. Latency by second of
 * sending goes to <file>.latency.csv at the end.
 */
function startTimeline(file: string, pid: number, metrics?: () => Promise<string>): NodeJS.Timeout {
  writeFileSync(file, 'second,broker_user_pct,broker_kernel_pct,broker_loop_max_ms,broker_minor_gc_ms\n');
  let last = { at: performance.now(), cpu: cpuTimes(pid), gc: 0 };
  let second = 0;
  return setInterval(() => {
    void (metrics ?? (async () => ''))().then((text) => {
      const now = { at: performance.now(), cpu: cpuTimes(pid), gc: gcSeconds(text).minor ?? 0 };
      const perCent = (d: number) => ((100 * d) / ((now.at - last.at) / 1000)).toFixed(0);
      const loopMax = /^broker_nodejs_eventloop_lag_max_seconds (\S+)/m.exec(text)?.[1];
      const row = [
        second++,
        perCent(now.cpu.user - last.cpu.user),
        perCent(now.cpu.system - last.cpu.system),
        loopMax === undefined ? '' : (Number(loopMax) * 1000).toFixed(0),
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
const qkeyBroker = { pid: broker.pid, pids: brokerNodes.map((b) => b.pid), metrics: brokerMetrics };
/** CPU seconds of all the target's processes (the brokers; over Redis, the redis-server too). */
const targetCpu = (target: { pid: number; pids?: number[] }) =>
  [...(target.pids ?? [target.pid]), ...(target.pids && redisPid ? [redisPid] : [])]
    .map(cpuTimes)
    .reduce((a, b) => ({ user: a.user + b.user, system: a.system + b.system }));
interface PhaseDevice {
  id: string;
  client: LeanMqttClient;
  seq: number;
  /** The bytes a device publishes: the envelope on QKey, JSON of the same length on plain Aedes. */
  payload(body: Buffer, seq: number): Buffer;
}

interface PhaseResult {
  sent: number;
  received: number;
  lost: number;
  duplicated: number;
  latency: { p50: number; p99: number; max: number };
  /** Latency of each device's first message of its session, which claims its uplink key (docs/PROTOCOL.md §9.1). */
  first: { count: number; p50: number; p99: number; max: number };
  windowsP99: number[];
  /** How long devices published, in seconds. */
  seconds: number;
  /** Broker CPU over the phase as a share of one core, user and kernel time. */
  cpu: { user: number; kernel: number };
  generatorCpu: number;
  /** Each core's busy share over the phase, all processes and the kernel. */
  machine: number[];
  loopDelay: { p99: number; max: number };
}

/**
 * Every device publishes RATE QoS 1 messages a second for SECONDS, spread evenly: the devices are dealt into
 * slices (50), one slice publishes every 1 / (50 * RATE) s. A late timer sends the slices it owes, so the offered
 * load stays what was asked for even when the load generator falls behind (the report gives the rate achieved).
 * The application records arrivals. Latency is arrival time minus the send time carried in the payload.
 */
async function telemetryPhase(
  devices: PhaseDevice[],
  app: LeanMqttClient,
  target: { pid: number; pids?: number[]; metrics?: () => Promise<string> },
  { timelineFile, seconds = SECONDS }: { timelineFile?: string | undefined; seconds?: number } = {},
): Promise<PhaseResult> {
  const ledger = new DeliveryLedger();
  /** Latencies by 10-second window of the phase, to tell a start-up burst from steady state. */
  const windows: number[][] = [];
  /** The same by second, for --timeline. */
  const bySecond: number[][] = [];
  const phaseStart = Date.now();
  const firsts: number[] = [];
  app.onMessage = (_topic, payload) => {
    const m = JSON.parse(payload.toString()) as { d: string; s: number; t: number };
    const latency = Date.now() - m.t;
    ledger.record(m.d, m.s, latency);
    if (m.s === 0) firsts.push(latency);
    (windows[Math.floor((m.t - phaseStart) / 10_000)] ??= []).push(latency);
    if (timelineFile) (bySecond[Math.floor((m.t - phaseStart) / 1000)] ??= []).push(latency);
  };
  const sent = new Map<string, number>();
  const tick = (d: PhaseDevice) => {
    const body = Buffer.from(JSON.stringify({ d: d.id, s: d.seq, t: Date.now() }));
    const payload = d.payload(body, d.seq);
    d.seq++;
    sent.set(d.id, (sent.get(d.id) ?? 0) + 1); // messages sent in this phase
    d.client.publish(topicOf(d.id), payload);
  };
  const cpuBefore = targetCpu(target);
  const machineBefore = machineCpu();
  const hereBefore = process.cpuUsage();
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const t = performance.now();
  const slices = 50;
  const sliceMs = 1000 / (slices * RATE);
  let slice = 0;
  const timer = setInterval(() => {
    const due = Math.floor((performance.now() - t) / sliceMs) + 1;
    for (; slice < due; slice++) for (let i = slice % slices; i < devices.length; i += slices) tick(devices[i]!);
  }, sliceMs);
  const timeline = timelineFile ? startTimeline(timelineFile, target.pid, target.metrics) : undefined;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  clearInterval(timer);
  clearInterval(timeline);
  const phase = (performance.now() - t) / 1000;
  const cpuAfter = targetCpu(target);
  const machine = busyShares(machineBefore, machineCpu());
  const here = process.cpuUsage(hereBefore);
  loopDelay.disable();
  await new Promise((r) => setTimeout(r, 5000)); // drain
  app.onMessage = undefined;
  if (timelineFile) {
    const rows = bySecond.map((l, i) => {
      const sorted = ascending(l ?? []);
      return [i, sorted.length, percentile(sorted, 50), percentile(sorted, 99), sorted.at(-1) ?? 0].join(',');
    });
    writeFileSync(`${timelineFile}.latency.csv`, `second,messages,p50_ms,p99_ms,max_ms\n${rows.join('\n')}\n`);
  }
  return {
    sent: [...sent.values()].reduce((a, b) => a + b, 0),
    received: ledger.received,
    lost: ledger.lost(sent),
    duplicated: ledger.duplicated,
    latency: ledger.latency(),
    first: (() => {
      const sorted = ascending(firsts);
      return {
        count: sorted.length,
        p50: percentile(sorted, 50),
        p99: percentile(sorted, 99),
        max: sorted.at(-1) ?? 0,
      };
    })(),
    windowsP99: windows.map((w) => percentile(ascending(w), 99)),
    seconds: phase,
    cpu: { user: (cpuAfter.user - cpuBefore.user) / phase, kernel: (cpuAfter.system - cpuBefore.system) / phase },
    generatorCpu: (here.user + here.system) / 1e6 / phase,
    machine,
    loopDelay: { p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 },
  };
}

const pct = (share: number) => `${(100 * share).toFixed(0)}%`;
/** Broker CPU time per delivered message, in microseconds. */
const cpuPerMessage = (r: PhaseResult) => ((r.cpu.user + r.cpu.kernel) * r.seconds * 1e6) / Math.max(1, r.received);

function report(r: PhaseResult, targets: boolean): void {
  const verdict = (target: string, pass: boolean) => (targets ? ` (target: ${target}: ${pass ? 'PASS' : 'FAIL'})` : '');
  console.log(
    `  CPU (100% = one core): broker ${pct(r.cpu.user + r.cpu.kernel)} (user ${pct(r.cpu.user)}, kernel ${pct(r.cpu.kernel)}) = ${cpuPerMessage(r).toFixed(0)} us per message; load generator ${pct(r.generatorCpu)}, its event-loop delay p99 ${r.loopDelay.p99.toFixed(0)} ms, max ${r.loopDelay.max.toFixed(0)} ms`,
  );
  console.log(
    `  machine: ${r.machine.map((busy, cpu) => `CPU ${cpu} ${pct(busy)} busy`).join(', ')} (all processes and the kernel)`,
  );
  console.log(
    `  telemetry: ${r.sent} sent (${(r.sent / r.seconds).toFixed(0)} msgs/s offered of ${(RATE * N).toFixed(0)}), ${r.received} received, lost ${r.lost}, duplicated ${r.duplicated}${verdict('zero loss at QoS 1', r.lost === 0)}`,
  );
  console.log(
    `  latency: p50 ${r.latency.p50} ms, p99 ${r.latency.p99} ms, max ${r.latency.max} ms${verdict('p99 < 100 ms', r.latency.p99 < 100)}`,
  );
  console.log(`  p99 by 10 s window: ${r.windowsP99.map((p) => `${p} ms`).join(', ')}`);
  if (r.first.count > 0)
    console.log(
      `  first message of each device's session (claims its uplink key; ${r.first.count} in this phase): p50 ${r.first.p50} ms, p99 ${r.first.p99} ms, max ${r.first.max} ms`,
    );
}

/** Keys in state claimed, both directions, from the key service's metrics. */
const claimedKeys = (metrics: string) =>
  [...metrics.matchAll(/^kms_keys\{direction="(?:up|down)",state="claimed"\} (\d+)/gm)].reduce(
    (n, m) => n + Number(m[1]),
    0,
  );
let stormWindow: [number, number] | undefined;
let teardownWindow: [number, number] | undefined;
const deviceIds = Array.from({ length: N }, (_, i) => `scale-${String(i).padStart(5, '0')}`);
const topicOf = (id: string) => `devices/${id}/up/telemetry`;
// As many connections as logins in flight (the storm's concurrency), as fetch opened before KmsClient pooled them.
const admin = new KmsClient(kms.line, { token: ADMIN, timeoutMs: 60_000, connections: CONCURRENCY });
const clients: LeanMqttClient[] = [];
let qkey: PhaseResult | undefined;
try {
  console.log(
    `bench/scale: ${N} devices, ${SECONDS} s at ${RATE} msg/s each, connect concurrency ${CONCURRENCY}; ${pinning ? `broker pinned to CPU ${brokerCpu}, key service and load generator to CPU ${othersCpus}` : 'no CPU pinning'}`,
  );
  for (const b of brokerNodes) console.log(`broker: ${b.line}`);
  if (values.redis)
    console.log(
      `${BROKERS} broker(s) over Redis (redis-server pid ${redisPid}); devices round-robin over them, the application on the first: ${(100 * (BROKERS - 1)) / BROKERS}% of messages cross brokers. "broker" CPU below is all brokers and the redis-server together`,
    );
  interface Dev {
    id: string;
    loginKey: Buffer;
    key: EnvelopeKey;
    client?: LeanMqttClient;
  }
  const devs: Dev[] = [];
  let t = performance.now();
  await pool(deviceIds, 32, async (id) => {
    const { loginKey, uplink } = await provisionBenchDevice(admin, id, 3);
    // The chip has its key schedule ready before the first message (SUITE_SM4_GCM state built now).
    const key = new EnvelopeKey(uplink);
    key.suite(SUITE_SM4_GCM);
    devs.push({ id, loginKey, key });
  });
  console.log(`provisioned ${N} devices in ${((performance.now() - t) / 1000).toFixed(1)} s (not part of the storm)`);

  const { client_secret } = await admin.registerApp('scale-app');
  const app = await LeanMqttClient.connect(mqttUrl, {
    clientId: 'scale-app/0',
    username: 'scale-app',
    password: (await admin.clientToken('scale-app', client_secret)).access_token,
  });
  clients.push(app);
  await app.subscribe('devices/+/up/#', 1);

  const kmsBefore = await (await fetch(`${kms.line}/metrics`)).text();
  const delivered = (text: string) => Number(/^kms_keys_delivered_total (\d+)/m.exec(text)?.[1] ?? 0);
  /** A device's login at the key service: challenge, the chip's proof, token. */
  const login = async (d: Dev): Promise<string> => {
    const { challenge } = await admin.challenge(d.id);
    const mac = Buffer.from(loginProof(d.loginKey, d.id, Buffer.from(challenge, 'base64'))).toString('base64');
    return (await admin.deviceToken(d.id, challenge, mac)).access_token;
  };
  const tokens = new Map<string, string>();
  if (values.prelogin) {
    t = performance.now();
    let loginFailures = 0;
    await pool(devs, CONCURRENCY, async (d) => {
      try {
        tokens.set(d.id, await login(d));
      } catch {
        loginFailures++;
      }
    });
    console.log(
      `login burst (--prelogin, before the timed storm, pinned as the storm is): ${N - loginFailures}/${N} devices logged in in ${((performance.now() - t) / 1000).toFixed(1)} s`,
    );
  }
  const stormPins = pinning && !values['pin-storm'];
  if (stormPins) for (const pid of [process.pid, kms.pid, ...brokerNodes.map((b) => b.pid)]) pin(pid, allCpus);
  const generatorProfile = profileAll ? await startProfiler() : undefined;
  const stormCpu = () => ({
    broker: targetCpu(qkeyBroker),
    kms: cpuTimes(kms.pid),
    generator: process.cpuUsage(),
  });
  const stormCpuBefore = stormCpu();
  t = performance.now();
  const stormFrom = monotonicUs();
  let failures = 0;
  await pool(devs, CONCURRENCY, async (d) => {
    try {
      const token = tokens.get(d.id) ?? (await login(d));
      // Round-robin over the brokers by device number (one broker: all on it).
      d.client = await LeanMqttClient.connect(mqttUrls[Number(d.id.slice('scale-'.length)) % BROKERS]!, {
        clientId: d.id,
        username: d.id,
        password: token,
        timeoutMs: 60_000,
      });
      clients.push(d.client);
    } catch {
      failures++;
    }
  });
  const stormSeconds = (performance.now() - t) / 1000;
  stormWindow = [stormFrom, monotonicUs()];
  if (stormPins) {
    pin(process.pid, othersCpus);
    pin(kms.pid, othersCpus);
    for (const b of brokerNodes) pin(b.pid, brokerCpu);
  }
  if (generatorProfile) {
    mkdirSync(join(profileAll!, 'generator'), { recursive: true });
    writeFileSync(
      join(profileAll!, 'generator', 'CPU.generator.0.0.cpuprofile'),
      JSON.stringify(await generatorProfile()),
    );
  }
  const stormCpuAfter = stormCpu();
  const cpuMs = (a: { user: number; system: number }, b: { user: number; system: number }) =>
    (1000 * (b.user + b.system - a.user - a.system)) / N;
  const claimsAtConnect = delivered(await (await fetch(`${kms.line}/metrics`)).text()) - delivered(kmsBefore);
  console.log(
    `connect storm (${values.prelogin ? 'MQTT connects with tokens from the login burst' : 'each device logs in, then connects'}; ${stormPins ? 'unpinned' : pinning ? 'pinned' : 'no pinning'}): ${N - failures}/${N} connected in ${stormSeconds.toFixed(1)} s (target: all within 20 s: ${failures === 0 && stormSeconds < 20 ? 'PASS' : 'FAIL'}), ${claimsAtConnect} keys claimed while connecting (a CONNECT claims none, docs/PROTOCOL.md §9.3)`,
  );
  console.log(
    `  CPU per device in the storm (CPU time: less sensitive to other work on the machine than wall time): broker ${cpuMs(stormCpuBefore.broker, stormCpuAfter.broker).toFixed(2)} ms, key service ${cpuMs(stormCpuBefore.kms, stormCpuAfter.kms).toFixed(2)} ms, load generator ${((stormCpuAfter.generator.user + stormCpuAfter.generator.system - stormCpuBefore.generator.user - stormCpuBefore.generator.system) / 1000 / N).toFixed(2)} ms; machine load (1 min) ${loadavg()[0]!.toFixed(1)}`,
  );

  const gcBefore = await brokerGc();
  const online: PhaseDevice[] = devs
    .filter((d) => d.client)
    .map((d) => ({
      id: d.id,
      client: d.client!,
      seq: 0,
      payload: (body, seq) =>
        Buffer.from(
          sealEnvelope(body, {
            key: d.key,
            keyIndex: 0,
            seq,
            deviceId: d.id,
            topic: topicOf(d.id),
            direction: 'up',
          }),
        ),
    }));
  console.log(`QKey broker, ${online.length} devices for ${SECONDS} s:`);
  if (Number(values.warmup) > 0) {
    const w = await telemetryPhase(online, app, qkeyBroker, { seconds: Number(values.warmup) });
    console.log(`  warm-up of ${values.warmup} s (not measured): p99 ${w.latency.p99} ms, lost ${w.lost}`);
    console.log(
      `  first message of each device's session (claims its uplink key; in the warm-up): p50 ${w.first.p50} ms, p99 ${w.first.p99} ms, max ${w.first.max} ms`,
    );
  }
  qkey = await telemetryPhase(online, app, qkeyBroker, { timelineFile: values.timeline });
  const gcAfter = await brokerGc();
  report(qkey, true);
  console.log(
    `  broker GC: ${Object.entries(gcAfter)
      .map(([kind, sec]) => `${kind} ${((sec - (gcBefore[kind] ?? 0)) * 1000).toFixed(0)} ms`)
      .join(', ')}`,
  );
  console.log(
    `memory: broker ${brokerNodes.map((b) => rssMiB(b.pid).toFixed(0)).join(' + ')} MiB RSS, key service ${rssMiB(kms.pid).toFixed(0)} MiB RSS (with ${online.length} connected devices)`,
  );

  // Teardown: every device disconnects, then the broker shuts down, retiring on its way out the uplink keys its
  // devices' sessions held (they would otherwise linger for a reconnect, docs/PROTOCOL.md §9).
  const held = delivered(await (await fetch(`${kms.line}/metrics`)).text()); // none retired yet: no rotation, no linger
  t = performance.now();
  const teardownFrom = monotonicUs();
  for (const c of clients.splice(0)) c.end();
  broker.stop();
  await broker.exited;
  const teardownSeconds = (performance.now() - t) / 1000;
  teardownWindow = [teardownFrom, monotonicUs()];
  // The key service's key-state gauges are recounted at most once per POOL_CENSUS_INTERVAL_MS.
  await new Promise((r) => setTimeout(r, POOL_CENSUS_INTERVAL_MS + 500));
  const left = claimedKeys(await (await fetch(`${kms.line}/metrics`)).text());
  console.log(
    `teardown: ${online.length} sessions ended and the broker shut down in ${teardownSeconds.toFixed(1)} s, ${held - left}/${held} claimed keys retired (target: < 5 s, every key retired: ${teardownSeconds < 5 && left === 0 ? 'PASS' : 'FAIL'})`,
  );
} finally {
  for (const c of clients.splice(0)) c.end();
  for (const b of brokerNodes) b.stop();
  kms.stop();
  setTimeout(() => rmSync(dir, { recursive: true, force: true }), 1000);
}

/**
 * The baseline: Aedes without QKey (bench/_plain-aedes.ts: the same emitter, concurrency and write coalescing, no
 * authentication, no envelopes), with the same Node flags as the QKey broker thread, pinned the same way, under
 * the same telemetry load (JSON padded to the envelope's length). It tells what on this machine comes from Aedes,
 * Node and the kernel, and what from QKey.
 */
/** Starts this process's CPU profiler; the returned function stops it and gives the profile. */
async function startProfiler(): Promise<() => Promise<object>> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  return async () => {
    const { profile } = await session.post('Profiler.stop');
    session.disconnect();
    return profile;
  };
}

// With --profile-all: each process's busy share of its core during the storm, and where that time went.
if (profileAll && stormWindow) {
  await kms.exited; // its profile is written as it exits
  const w = stormWindow;
  for (const [name, file] of [
    ['broker thread', brokerThreadProfile(profileAll)],
    ['key service', mainThreadProfile(join(profileAll, 'kms'))],
    ['load generator', mainThreadProfile(join(profileAll, 'generator'))],
  ] as const) {
    console.log(
      `${name} during the storm: busy ${(100 * windowShare(file, w[0], w[1]).busy).toFixed(0)}% of a core; most self time:`,
    );
    for (const [fn, share] of topFunctions(file, w[0], w[1], 8)) console.log(`  ${(100 * share).toFixed(1)}% ${fn}`);
  }
}

// The broker thread's profile (written when it exited): how busy it was, and the key-service client's share of that.
if (values['profile-broker'] && stormWindow) {
  const file = brokerThreadProfile(values['profile-broker']);
  for (const [phase, w] of [
    ['connect storm', stormWindow],
    ['teardown', teardownWindow],
  ] as const) {
    if (!w) continue;
    const s = windowShare(file, w[0], w[1]);
    console.log(
      `broker thread profile, ${phase}: busy ${(s.busy * 100).toFixed(0)}%, key-service client ${(s.client * 100).toFixed(1)}% of that${phase === 'connect storm' ? ` (target < 8%: ${s.client < 0.08 ? 'PASS' : 'FAIL'})` : ''}`,
    );
  }
}

if (values.baseline && qkey) {
  const semiSpaceMiB = Number(values['broker-semi-space'] ?? BROKER_DEFAULTS.semiSpaceMiB);
  await new Promise((r) => setTimeout(r, 2000)); // let the QKey processes exit
  const plain = await start(
    [],
    /listening: (.*)$/m,
    [
      // The QKey broker thread's semi-space (0: V8's default there, so here too).
      ...(semiSpaceMiB > 0 ? [`--max-semi-space-size=${semiSpaceMiB}`] : []),
      ...values['broker-node-flags'].split(' ').filter(Boolean),
    ],
    fileURLToPath(new URL('./_plain-aedes.js', import.meta.url)),
  );
  pin(plain.pid, brokerCpu);
  const url = /mqtt (mqtt:\/\/\S+)/.exec(plain.line)![1]!;
  const plainClients: LeanMqttClient[] = [];
  try {
    const app = await LeanMqttClient.connect(url, { clientId: 'scale-app' });
    plainClients.push(app);
    await app.subscribe('devices/+/up/#', 1);
    const online: PhaseDevice[] = [];
    // JSON ignores trailing white space: the same length as the envelope (header and tag).
    const padding = Buffer.alloc(ENVELOPE_OVERHEAD, 0x20);
    await pool(deviceIds, CONCURRENCY, async (id) => {
      const client = await LeanMqttClient.connect(url, { clientId: id, timeoutMs: 60_000 });
      plainClients.push(client);
      online.push({ id, client, seq: 0, payload: (body) => Buffer.concat([body, padding]) });
    });
    // Without logins and key claims the connects arrive many times faster than in the storm; the broker gets a
    // few seconds to finish them, so that the phase measures telemetry, not the tail of a connect burst.
    await new Promise((r) => setTimeout(r, 5000));
    console.log(
      `baseline, Aedes without QKey (no authentication, no envelopes), ${online.length} devices for ${SECONDS} s (after a 5 s pause for the connects):`,
    );
    const base = await telemetryPhase(online, app, plain, {
      timelineFile: values.timeline && `${values.timeline}.baseline.csv`,
    });
    report(base, false);
    console.log(
      `QKey / Aedes without QKey: broker CPU per message ${(cpuPerMessage(qkey) / cpuPerMessage(base)).toFixed(2)}x (${cpuPerMessage(qkey).toFixed(0)} vs ${cpuPerMessage(base).toFixed(0)} us), latency p99 ${qkey.latency.p99} vs ${base.latency.p99} ms`,
    );
  } finally {
    for (const c of plainClients) c.end();
    plain.stop();
  }
}
