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
import { KmsClient } from '../kms-api/client.js';
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
  onProgress?: (p: SimProgress) => void;
}

export interface SimProgress {
  elapsedSec: number;
  online: number;
  sent: number;
  received: number;
  commands: number;
}

export interface SimReport {
  devices: number;
  durationSec: number;
  qos: 0 | 1;
  sent: number;
  received: number;
  lost: number;
  duplicated: number;
  corrupted: number;
  decryptFailures: number;
  latencyMs: { p50: number; p95: number; p99: number; max: number };
  commands: { sent: number; received: number; corrupted: number };
  reconnects: number;
  errors: Record<string, number>;
  /** Everything that should never happen did not: no loss at QoS 1, no corruption, no decrypt failure. */
  ok: boolean;
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

export async function runSimulation(o: SimOptions): Promise<SimReport> {
  const qos = o.qos ?? 1;
  const prefix = o.prefix ?? `sim-${randomBytes(3).toString('hex')}`;
  const ids = simulationIds(prefix, o.devices);
  const work = mkdtempSync(join(tmpdir(), 'qkey-sim-'));
  const cleanup: Array<() => Promise<unknown> | void> = [() => rmSync(work, { recursive: true, force: true })];
  const errors: Record<string, number> = {};
  const fail = (kind: string) => (errors[kind] = (errors[kind] ?? 0) + 1);
  try {
    let { brokerUrl, kmsUrl, adminToken } = o;
    if (!brokerUrl || !kmsUrl) {
      const local = await startLocalSystem(join(work, 'kms'), { brokerId: 'sim-broker', broker: o.broker ?? {} });
      cleanup.push(() => local.close());
      adminToken = local.adminToken;
      const { broker, kms } = local;
      brokerUrl = broker.urls.mqtt!;
      kmsUrl = kms.url;
    }
    if (!adminToken) throw new Error('an admin token is needed to provision the simulated devices');
    const admin = new KmsClient(kmsUrl, { token: adminToken });
    const machine = new FillingMachine(new Qrng(), admin);
    const ledger = new DeliveryLedger();
    const commandsSent = new Map<string, number>();
    let commandsReceived = 0;
    let commandsCorrupted = 0;
    let decryptFailures = 0;
    let reconnects = 0;

    // Provision: one chip per device, filled by the filling machine (a fast KDF: these chips live for one run).
    const rotateAfter = o.rotateAfter ?? 10_000;
    const keysNeeded = Math.ceil((o.rate * (o.durationSec + 5)) / rotateAfter) + 4;
    const devices: SimulatedDevice[] = [];
    for (let i = 0; i < o.devices; i++) {
      const id = ids.devices[i]!;
      const chip = SecurityChip.create(
        join(work, `${id}.chip`),
        { deviceId: id, pin: '0000', kdfIterations: 1000 },
        { rotation: { messages: rotateAfter } },
      );
      cleanup.push(() => chip.close());
      await machine.fill(chip, { up: keysNeeded, down: Math.max(8, keysNeeded) });
      devices.push(
        new SimulatedDevice(chip, {
          brokerUrl,
          kmsUrl,
          qos,
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

    const { client_secret } = await admin.registerApp(ids.app);
    const app = await SimulatedApp.connect(brokerUrl, kmsUrl, ids.app, client_secret);
    cleanup.push(() => app.close());
    await app.onTelemetry(
      (t, topic) => {
        if (topic !== `devices/${t.device}/up/telemetry` || !Number.isInteger(t.seq)) ledger.corrupted++;
        else ledger.record(t.device, t.seq, Date.now() - t.sentAt);
      },
      () => ledger.corrupted++,
    );

    // Connect everyone, then publish at the rate until the time is up.
    for (const d of devices) {
      await d.connect();
      cleanup.push(() => d.disconnect());
    }
    const started = Date.now();
    const period = 1000 / o.rate;
    const timers: NodeJS.Timeout[] = [];
    for (const d of devices) {
      const tick = async () => {
        if (!d.connected) {
          try {
            await d.connect();
            reconnects++;
          } catch {
            fail('reconnect');
            return;
          }
        }
        await d.publishTelemetry().catch(() => fail('publish'));
      };
      // Spread devices over the period so they do not all publish in the same instant.
      timers.push(setTimeout(() => timers.push(setInterval(() => void tick(), period)), Math.random() * period));
    }
    let n = 0;
    if (o.commandRate && o.commandRate > 0) {
      timers.push(
        setInterval(() => {
          const d = devices[n++ % devices.length]!;
          commandsSent.set(d.id, (commandsSent.get(d.id) ?? 0) + 1);
          void app.command(d.id, `cmd ${d.id} ${n}`).catch(() => fail('command-publish'));
        }, 1000 / o.commandRate),
      );
    }
    const progress = setInterval(() => {
      o.onProgress?.({
        elapsedSec: (Date.now() - started) / 1000,
        online: devices.filter((d) => d.connected).length,
        sent: devices.reduce((a, d) => a + d.stats.sent, 0),
        received: ledger.received,
        commands: commandsReceived,
      });
    }, 1000);
    await new Promise((r) => setTimeout(r, o.durationSec * 1000));
    timers.forEach((t) => clearInterval(t));
    clearInterval(progress);
    await new Promise((r) => setTimeout(r, 1500)); // let what is in flight arrive

    const sentPerDevice = new Map(devices.map((d) => [d.id, d.stats.sent]));
    const sent = devices.reduce((a, d) => a + d.stats.sent, 0);
    const lost = ledger.lost(sentPerDevice);
    const commandsTotal = [...commandsSent.values()].reduce((a, b) => a + b, 0);
    const report: SimReport = {
      devices: o.devices,
      durationSec: o.durationSec,
      qos,
      sent,
      received: ledger.received,
      lost,
      duplicated: ledger.duplicated,
      corrupted: ledger.corrupted,
      decryptFailures,
      latencyMs: ledger.latency(),
      commands: { sent: commandsTotal, received: commandsReceived, corrupted: commandsCorrupted },
      reconnects,
      errors,
      ok: (qos === 0 || lost === 0) && ledger.corrupted === 0 && commandsCorrupted === 0 && decryptFailures === 0,
    };
    return report;
  } finally {
    for (const c of cleanup.reverse()) await Promise.resolve(c()).catch(() => undefined);
  }
}
