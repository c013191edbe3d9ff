// `qkey sim` as a callable API: N simulated terminals on emulated chips and an application, against a running
// system or one started here on free loopback ports; returns a report of what arrived, how fast, and what failed.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrokerOverrides } from '../broker/config.js';
import { SecurityChip } from '../hsm-emulator/chip.js';
import { FillingMachine } from '../hsm-emulator/filling-machine.js';
import { Qrng } from '../hsm-emulator/qrng.js';
import { KmsClient, KmsUnreachableError } from '../kms-api/client.js';
import { assertDeviceId } from '../protocol/index.js';
import { SimulatedApp } from './simulated-app.js';
import { SimulatedDevice } from './simulated-device.js';
import { startLocalSystem } from './local-system.js';
import { DeliveryLedger } from './stats.js';

export interface SimOptions {
  devices: number;
  durationSec: number;
  /** Telemetry messages per second per device. */
  rate: number;
  qos?: 0 | 1;
  /** A running system; when absent, a key service and a broker are started here on free ports. */
  brokerUrl?: string;
  kmsUrl?: string;
  adminToken?: string;
  /** Broker settings for a system started here (for example low rotation limits). */
  broker?: BrokerOverrides;
  /** Commands per second from the application, spread over the devices. */
  commandRate?: number;
  /** Chips move to their next uplink key after this many messages (low values exercise rotation). */
  rotateAfter?: number;
  /** Device ids are `${prefix}-0000`...; default: a random prefix per run. */
  prefix?: string;
  /** Telemetry messages per second (all devices) below which the run fails; default 90% of the offered rate. */
  minRate?: number;
  /** Against a running system, leave the devices and the application registered and active at the end. */
  keepDevices?: boolean;
  /** Reconnect backoff of the simulated devices (default 200 ms doubling to 5 s). */
  reconnect?: { minMs: number; maxMs: number };
  /**
   * Ends the run early (Ctrl-C): before telemetry starts, setup stops with a SimSetupError; during the run, the
   * telemetry phase ends, the report covers the time run, and what the run registered is revoked as at the end.
   */
  signal?: AbortSignal;
  onProgress?: (p: SimProgress) => void;
}

export interface SimProgress {
  phase: 'provision' | 'connect' | 'run';
  elapsedSec: number;
  /** Devices provisioned (phase provision), connected (connect) or online (run). */
  online: number;
  sent: number;
  received: number;
  commands: number;
}

export interface SimReport {
  devices: number;
  durationSec: number;
  /** Present when the run was stopped (signal) before its duration: the seconds of telemetry it ran. */
  stoppedAfterSec?: number;
  qos: 0 | 1;
  sent: number;
  received: number;
  lost: number;
  duplicated: number;
  corrupted: number;
  decryptFailures: number;
  latencyMs: { p50: number; p95: number; p99: number; max: number };
  commands: { sent: number; received: number; corrupted: number };
  /** Telemetry messages per second asked for (devices x rate), acknowledged (QoS 1) or sent (QoS 0), and the floor. */
  rate: { offered: number; achieved: number; min: number };
  /** Successful reconnects of the devices and of the application after lost connections. */
  reconnects: number;
  appReconnects: number;
  errors: Record<string, number>;
  /** Devices and applications this run registered and then revoked (against a running system). */
  revoked: number;
  /** Why the run failed, one phrase each; empty when ok. */
  failures: string[];
  /** No loss at QoS 1, no corruption, no decrypt failure, and at least the minimum rate. */
  ok: boolean;
}

/** Setting up the run failed before any telemetry was sent; `unreachable` when a peer could not be reached. */
export class SimSetupError extends Error {
  override name = 'SimSetupError';
  constructor(
    message: string,
    readonly unreachable: boolean,
  ) {
    super(message);
  }
}

/** The ids a run will register, checked against the id rule before anything starts (docs/PROTOCOL.md §14). */
export function simulationIds(prefix: string, devices: number): { devices: string[]; app: string } {
  const ids = {
    devices: Array.from({ length: devices }, (_, i) => `${prefix}-${String(i).padStart(4, '0')}`),
    app: `${prefix}-app`,
  };
  for (const id of ids.devices) assertDeviceId(id, 'simulated device id');
  assertDeviceId(ids.app, 'simulated application id');
  return ids;
}

const UNREACHABLE = /^(ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|EAI_AGAIN)$/;

/** A setup step's failure as a SimSetupError naming the step; an unreachable key service or broker says so. */
async function setupStep<T>(what: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    const code = (err as { code?: string }).code ?? '';
    const unreachable = err instanceof KmsUnreachableError || UNREACHABLE.test(code);
    throw new SimSetupError(
      `${what}: ${code && !unreachable ? `${code}: ` : ''}${(err as Error).message}`,
      unreachable,
    );
  }
}

/** Settles after `ms`, or at once when `signal` is aborted; true when it was aborted. */
function sleepUnlessAborted(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(true);
    const done = (aborted: boolean) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(aborted);
    };
    const onAbort = () => done(true);
    const timer = setTimeout(() => done(false), ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Pure: the failures a finished run's figures show. */
export function judge(r: Omit<SimReport, 'failures' | 'ok'>): string[] {
  const failures: string[] = [];
  if (r.qos === 1 && r.lost > 0) failures.push(`${r.lost} messages lost at QoS 1`);
  if (r.corrupted > 0) failures.push(`${r.corrupted} telemetry messages corrupted`);
  if (r.commands.corrupted > 0) failures.push(`${r.commands.corrupted} commands corrupted`);
  if (r.decryptFailures > 0) failures.push(`${r.decryptFailures} commands the chips could not open`);
  if (r.rate.achieved < r.rate.min)
    failures.push(`sent ${r.rate.achieved} msgs/s, below the minimum ${r.rate.min} (offered ${r.rate.offered})`);
  return failures;
}

export async function runSimulation(o: SimOptions): Promise<SimReport> {
  const qos = o.qos ?? 1;
  const prefix = o.prefix ?? `sim-${randomBytes(3).toString('hex')}`;
  const ids = simulationIds(prefix, o.devices);
  const work = mkdtempSync(join(tmpdir(), 'qkey-sim-'));
  const cleanup: Array<() => Promise<unknown> | void> = [() => rmSync(work, { recursive: true, force: true })];
  const errors: Record<string, number> = {};
  const fail = (kind: string) => (errors[kind] = (errors[kind] ?? 0) + 1);
  const setupStarted = Date.now();
  const progress = (phase: SimProgress['phase'], online: number) =>
    o.onProgress?.({
      phase,
      elapsedSec: (Date.now() - setupStarted) / 1000,
      online,
      sent: 0,
      received: 0,
      commands: 0,
    });
  let revoked = 0;
  let report: SimReport | undefined;
  const stopIfAsked = () => {
    if (o.signal?.aborted) throw new SimSetupError('stopped before the run began', false);
  };
  const revokeBudgetMs = 10_000 + 100 * o.devices;
  try {
    let { brokerUrl, kmsUrl, adminToken } = o;
    const external = Boolean(brokerUrl && kmsUrl);
    if (!brokerUrl || !kmsUrl) {
      const local = await setupStep('starting a key service and a broker', () =>
        startLocalSystem(join(work, 'kms'), { brokerId: 'sim-broker', broker: o.broker ?? {} }),
      );
      cleanup.push(() => local.close());
      adminToken = local.adminToken;
      const { broker, kms } = local;
      brokerUrl = broker.urls.mqtt!;
      kmsUrl = kms.url;
    }
    if (!adminToken) throw new SimSetupError('an admin token is needed to provision the simulated devices', false);
    const admin = new KmsClient(kmsUrl, { token: adminToken });
    const machine = new FillingMachine(new Qrng(), admin);
    const ledger = new DeliveryLedger();
    const commandsSent = new Map<string, number>();
    let commandsReceived = 0;
    let commandsCorrupted = 0;
    let decryptFailures = 0;
    const registered: Array<{ kind: 'device' | 'app'; id: string }> = [];
    if (external && !o.keepDevices) {
      // Against a running system, what this run registered is revoked at the end: its tokens stop working and
      // the unused keys are destroyed, so a CI run leaves no active simulated devices behind.
      cleanup.push(async () => {
        const give = Date.now() + revokeBudgetMs;
        for (const r of registered.reverse()) {
          if (Date.now() > give) break;
          const done =
            r.kind === 'device' ? admin.revokeDevice(r.id, 'qkey sim: end of run') : admin.revokeClient('app', r.id);
          await done.then(
            () => revoked++,
            () => fail('revoke'),
          );
        }
      });
    }

    // Provision: one chip per device, filled by the filling machine (a fast KDF: these chips live for one run).
    // Enough uplink keys for the run's rotations and for a new session at each reconnect.
    const rotateAfter = o.rotateAfter ?? 10_000;
    const keysNeeded = Math.ceil((o.rate * (o.durationSec + 5)) / rotateAfter) + 16;
    const devices: SimulatedDevice[] = [];
    progress('provision', 0);
    const ticker = setInterval(() => progress('provision', devices.length), 1000);
    try {
      for (let i = 0; i < o.devices; i++) {
        stopIfAsked();
        const id = ids.devices[i]!;
        const chip = SecurityChip.create(
          join(work, `${id}.chip`),
          { deviceId: id, pin: '0000', kdfIterations: 1000 },
          { rotation: { messages: rotateAfter } },
        );
        cleanup.push(() => chip.close());
        registered.push({ kind: 'device', id });
        await setupStep(`filling the chip of ${id}`, () =>
          machine.fill(chip, { up: keysNeeded, down: Math.max(8, keysNeeded) }),
        );
        devices.push(
          new SimulatedDevice(chip, {
            brokerUrl,
            kmsUrl,
            qos,
            reconnect: o.reconnect ?? { minMs: 200, maxMs: 5000 },
            onCommand: (c) => {
              const m = /^cmd (\S+) (\d+)$/.exec(c);
              if (m && m[1] === id) commandsReceived++;
              else commandsCorrupted++;
            },
            onError: (kind) => {
              if (kind === 'command') decryptFailures++;
              fail(kind);
            },
          }),
        );
      }
    } finally {
      clearInterval(ticker);
    }
    progress('provision', devices.length);

    registered.push({ kind: 'app', id: ids.app });
    const { client_secret } = await setupStep(`registering the application ${ids.app}`, () =>
      admin.registerApp(ids.app),
    );
    const app = await setupStep(`connecting the application to ${brokerUrl}`, () =>
      SimulatedApp.connect(brokerUrl, kmsUrl, ids.app, client_secret, { reconnectMs: 500 }),
    );
    cleanup.push(() => app.close());
    await setupStep('subscribing the application', () =>
      app.onTelemetry(
        (t, topic) => {
          if (topic !== `devices/${t.device}/up/telemetry` || !Number.isInteger(t.seq)) ledger.corrupted++;
          else ledger.record(t.device, t.seq, Date.now() - t.sentAt);
        },
        () => ledger.corrupted++,
      ),
    );

    // Connect everyone, then publish at the rate until the time is up.
    for (const d of devices) {
      stopIfAsked();
      await setupStep(`connecting ${d.id} to ${brokerUrl}`, () => d.connect());
      cleanup.push(() => d.disconnect());
      progress('connect', devices.indexOf(d) + 1);
    }
    const started = Date.now();
    const period = 1000 / o.rate;
    const timers: NodeJS.Timeout[] = [];
    // At most this many of a device's publishes wait for their PUBACK; a tick beyond it is not sent, so a
    // machine that cannot keep up shows as a shortfall of the achieved rate, not as unbounded memory.
    const maxInFlight = 16;
    for (const d of devices) {
      let inFlight = 0;
      const tick = () => {
        // A device away (reconnecting) or with its application away does not send: nobody would receive it.
        if (!d.connected || !app.connected) return fail('offline');
        if (inFlight >= maxInFlight) return fail('behind');
        inFlight++;
        void d
          .publishTelemetry()
          .catch(() => fail('publish'))
          .finally(() => inFlight--);
      };
      // Spread devices over the period so they do not all publish in the same instant.
      timers.push(
        setTimeout(() => {
          tick();
          timers.push(setInterval(tick, period));
        }, Math.random() * period),
      );
    }
    let n = 0;
    if (o.commandRate && o.commandRate > 0) {
      timers.push(
        setInterval(() => {
          const d = devices[n++ % devices.length]!;
          if (!d.connected || !app.connected) return;
          commandsSent.set(d.id, (commandsSent.get(d.id) ?? 0) + 1);
          void app.command(d.id, `cmd ${d.id} ${n}`).catch(() => fail('command-publish'));
        }, 1000 / o.commandRate),
      );
    }
    const progressTimer = setInterval(() => {
      o.onProgress?.({
        phase: 'run',
        elapsedSec: (Date.now() - started) / 1000,
        online: devices.filter((d) => d.connected).length,
        sent: devices.reduce((a, d) => a + d.stats.sent, 0),
        received: ledger.received,
        commands: commandsReceived,
      });
    }, 1000);
    stopIfAsked();
    const stopped = await sleepUnlessAborted(o.durationSec * 1000, o.signal);
    timers.forEach((t) => clearInterval(t));
    clearInterval(progressTimer);
    const elapsedSec = (Date.now() - started) / 1000;
    await new Promise((r) => setTimeout(r, 1500)); // let what is in flight arrive

    const sentPerDevice = new Map(devices.map((d) => [d.id, d.stats.sent]));
    const sent = devices.reduce((a, d) => a + d.stats.sent, 0);
    const lost = ledger.lost(sentPerDevice);
    const commandsTotal = [...commandsSent.values()].reduce((a, b) => a + b, 0);
    const offered = round2(o.devices * o.rate);
    const figures = {
      devices: o.devices,
      durationSec: o.durationSec,
      ...(stopped ? { stoppedAfterSec: round2(elapsedSec) } : {}),
      qos,
      sent,
      received: ledger.received,
      lost,
      duplicated: ledger.duplicated,
      corrupted: ledger.corrupted,
      decryptFailures,
      latencyMs: ledger.latency(),
      commands: { sent: commandsTotal, received: commandsReceived, corrupted: commandsCorrupted },
      rate: { offered, achieved: round2(sent / elapsedSec), min: round2(o.minRate ?? offered * 0.9) },
      reconnects: devices.reduce((a, d) => a + d.stats.reconnects, 0),
      appReconnects: app.reconnects,
      errors,
      revoked: 0,
    };
    const failures = judge(figures);
    report = { ...figures, failures, ok: failures.length === 0 };
    return report;
  } finally {
    for (const c of cleanup.reverse()) await settleWithin(revokeBudgetMs, c);
    if (report) report.revoked = revoked;
  }
}

/** Runs a cleanup step, giving up on it after `ms`: a step that hangs must not keep the run from ending. */
async function settleWithin(ms: number, step: () => Promise<unknown> | void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.resolve()
      .then(step)
      .catch(() => undefined),
    new Promise((r) => (timer = setTimeout(r, ms))),
  ]);
  clearTimeout(timer);
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
