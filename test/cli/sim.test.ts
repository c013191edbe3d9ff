// `qkey sim` as CI runs it: a broker restarted mid-run (devices and application reconnect, the summary is printed,
// what the run registered is revoked), distinct exit statuses for setup failures and unreachable peers, and a
// shortfall of the achieved rate failing the run.
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SINGLE_HOST_LOGIN_LIMITS } from '../../device-sim/local-system.js';
import { judge, runSimulation, SimSetupError } from '../../device-sim/simulation.js';
import { removeDir, startTestKms, tempDir, type TestKms } from '../helpers/kms.js';
import { QKEY_BIN, type QkeyProcess, spawnQkey } from '../helpers/process.js';

async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

function runSim(
  args: string[],
  cwd?: string,
): {
  proc: ChildProcess;
  done: Promise<{ code: number | null; out: string; err: string }>;
} {
  const proc = spawn(process.execPath, [QKEY_BIN, 'sim', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(cwd && { cwd }),
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) =>
    proc.once('exit', (code) => resolve({ code, out, err })),
  );
  return { proc, done };
}

/** Resolves once `re` has matched `count` times in the process's output. */
async function seen(p: QkeyProcess, re: RegExp, count: number, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while ((p.output().match(new RegExp(re, 'g')) ?? []).length < count) {
    if (Date.now() > until) throw new Error(`not seen ${count} x ${re}:\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let t: TestKms;
beforeAll(async () => {
  t = await startTestKms({ loginLimits: SINGLE_HOST_LOGIN_LIMITS });
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

const brokerArgs = (port: number) => [
  'broker',
  '--port',
  String(port),
  '--http-port',
  'off',
  '--kms',
  t.url,
  '--data',
  t.dataDir,
  '--semi-space',
  '0',
  '--broker-id',
  'sim-test-broker',
];
const env = { QKEY_ADMIN_TOKEN: 'test-admin-token', QKEY_BROKER_LOG_LEVEL: 'info' };

describe('qkey sim against a running system', () => {
  it('survives a broker restart mid-run: devices reconnect, SIGTERM ends the run with its report, its devices are revoked', async () => {
    const port = await closedPort();
    let broker = await spawnQkey(brokerArgs(port), /qkey broker listening/, env);
    const sim = runSim([
      ...['--broker', `mqtt://127.0.0.1:${port}`, '--kms', t.url, '--token', 'test-admin-token'],
      ...['--devices', '3', '--duration', '600', '--rate', '2', '--min-rate', '0', '--json', '--commands', '1'],
    ]);
    try {
      await seen(broker, /client connected/, 4).catch(async (err: Error) => {
        sim.proc.kill('SIGTERM');
        const r = await sim.done;
        throw new Error(`${err.message}\nsim: ${r.code}\n${r.out}\n${r.err}`);
      }); // three devices and the application
      await broker.stop('SIGKILL'); // a crash: every connection drops at once
      broker = await spawnQkey(brokerArgs(port), /qkey broker listening/, env);
      await seen(broker, /client connected/, 4);
      // The run lasts until it is told to stop, so a slow restart cannot outlast it; SIGTERM ends it like Ctrl-C.
      sim.proc.kill('SIGTERM');
      const r = await sim.done;
      expect(r.code === 0 || r.code === 1, `exit ${r.code}\n${r.err}`).toBe(true);
      const report = JSON.parse(r.out) as {
        reconnects: number;
        appReconnects: number;
        received: number;
        corrupted: number;
        decryptFailures: number;
        revoked: number;
        stoppedAfterSec: number;
        durationSec: number;
        failures: string[];
        rate: { offered: number; achieved: number; min: number };
      };
      expect(report.durationSec).toBe(600);
      expect(report.stoppedAfterSec).toBeGreaterThan(0);
      expect(report.stoppedAfterSec).toBeLessThan(600);
      expect(report.reconnects).toBeGreaterThanOrEqual(3);
      expect(report.appReconnects).toBeGreaterThanOrEqual(1);
      expect(report.corrupted).toBe(0);
      expect(report.decryptFailures).toBe(0);
      expect(report.rate).toMatchObject({ offered: 6, min: 0 });
      expect(report.revoked).toBe(4);
      for (const f of report.failures) expect(f).toMatch(/messages lost at QoS 1/); // at most the in-flight ones
      const devices = (await t.admin.listDevices(undefined, 1000)).devices.filter((d) =>
        d.device_id.startsWith('sim-'),
      );
      expect(devices).toHaveLength(3);
      for (const d of devices) expect(d.state).toBe('revoked');
      const apps = (await t.admin.listClients('app')).filter((c) => c.client_id.startsWith('sim-'));
      expect(apps.map((a) => a.state)).toEqual(['revoked']);
    } finally {
      sim.proc.kill('SIGKILL');
      await broker.stop('SIGTERM');
    }
  }, 120_000);

  it('an unreachable broker exits 3, a refused admin token exits 4 (setup), each as JSON with --json', async () => {
    const port = await closedPort();
    const unreachable = await runSim([
      ...['--broker', `mqtt://127.0.0.1:${port}`, '--kms', t.url, '--token', 'test-admin-token'],
      ...['--devices', '1', '--duration', '1', '--json'],
    ]).done;
    expect(unreachable.code).toBe(3);
    expect(JSON.parse(unreachable.out)).toMatchObject({ exitStatus: 3, error: { code: 'SIM_UNREACHABLE' } });
    expect(unreachable.err).toMatch(/ECONNREFUSED/);

    const refused = await runSim([
      ...['--broker', `mqtt://127.0.0.1:${port}`, '--kms', t.url, '--token', 'wrong-token'],
      ...['--devices', '1', '--duration', '1', '--json'],
    ]).done;
    expect(refused.code).toBe(4);
    expect(JSON.parse(refused.out)).toMatchObject({ exitStatus: 4, error: { code: 'SIM_SETUP_FAILED' } });
    expect(refused.err).toMatch(/filling the chip of sim-[0-9a-f]+-0000: .*admin token refused/);
  }, 60_000);
});

describe('qkey sim on its own system', () => {
  it('a run that sends less than --min-rate fails with exit 1 and says so; it leaves nothing where it ran', async () => {
    const cwd = tempDir('qkey-sim-cwd-');
    const r = await runSim(['--devices', '1', '--duration', '2', '--rate', '5', '--min-rate', '1000'], cwd).done;
    expect(readdirSync(cwd)).toEqual([]); // its key service and broker kept their stores in its own temporary folder
    removeDir(cwd);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/rate {7}offered 5 msgs\/s, achieved [\d.]+ msgs\/s \(minimum 1000\)/);
    expect(r.out).toMatch(/result {5}FAILED: sent [\d.]+ msgs\/s, below the minimum 1000 \(offered 5\)/);
  }, 60_000);

  it('a stop asked before telemetry starts ends setup with a setup error, and cleans up', async () => {
    const stop = new AbortController();
    const run = runSimulation({
      devices: 2,
      durationSec: 60,
      rate: 1,
      signal: stop.signal,
      onProgress: (p) => p.phase === 'provision' && stop.abort(),
    });
    await expect(run).rejects.toThrow(SimSetupError);
    await expect(run).rejects.toThrow(/stopped before the run began/);
  }, 60_000);
});

describe('judge', () => {
  const base = {
    devices: 1,
    durationSec: 1,
    qos: 1 as const,
    sent: 10,
    received: 10,
    lost: 0,
    duplicated: 0,
    corrupted: 0,
    decryptFailures: 0,
    latencyMs: { p50: 1, p95: 1, p99: 1, max: 1 },
    commands: { sent: 0, received: 0, corrupted: 0 },
    rate: { offered: 10, achieved: 10, min: 9 },
    reconnects: 0,
    appReconnects: 0,
    errors: {},
    revoked: 0,
  };
  it('passes a clean run and names each kind of failure', () => {
    expect(judge(base)).toEqual([]);
    expect(judge({ ...base, lost: 2 })).toEqual(['2 messages lost at QoS 1']);
    expect(judge({ ...base, qos: 0, lost: 2 })).toEqual([]);
    expect(judge({ ...base, rate: { offered: 10, achieved: 8.5, min: 9 } })).toEqual([
      'sent 8.5 msgs/s, below the minimum 9 (offered 10)',
    ]);
    expect(judge({ ...base, corrupted: 1, decryptFailures: 1 })).toHaveLength(2);
  });
});
