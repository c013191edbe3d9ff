// `qkey sim`: simulated terminals and an application against a system, with a report and a CI-friendly exit status.
import { parseArgs } from 'node:util';
import { runSimulation, type SimReport } from '../device-sim/simulation.js';
import { adminTokenFrom } from './admin-command.js';
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from './io.js';

export const SIM_USAGE = `Usage: qkey sim --devices <n> --duration <seconds> [--rate <msgs/s>] [--qos 0|1] [--commands <per s>] [--rotate-after <n>]
                [--json] [--broker <url> --kms <url> [--token <admin token>] [--data <dir>]]

Simulates N devices, each with its own emulated chip filled through the filling machine: log in, connect,
publish telemetry (with a sequence number and send time) and open commands; an application consumes the
decrypted telemetry and sends commands. Without --broker and --kms it starts its own key service and broker.
Exit status 1 on any loss at QoS 1, any corruption, or any failure to decrypt; 2 on a usage error.`;

const OPTIONS = {
  devices: { type: 'string', default: '10' },
  duration: { type: 'string', default: '10' },
  rate: { type: 'string', default: '1' },
  qos: { type: 'string', default: '1' },
  commands: { type: 'string', default: '1' },
  'rotate-after': { type: 'string' },
  json: { type: 'boolean' },
  broker: { type: 'string' },
  kms: { type: 'string' },
  token: { type: 'string' },
  data: { type: 'string', default: './data' },
  help: { type: 'boolean', short: 'h' },
} as const;

function num(v: string, flag: string, min: number, max: number): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${flag} must be a number in [${min}, ${max}]`);
  return n;
}

export function formatReport(r: SimReport): string {
  return [
    `devices ${r.devices}, ${r.durationSec} s, QoS ${r.qos}`,
    `telemetry  sent ${r.sent}, received ${r.received}, lost ${r.lost}, duplicated ${r.duplicated}, corrupted ${r.corrupted}`,
    `latency    p50 ${r.latencyMs.p50} ms, p95 ${r.latencyMs.p95} ms, p99 ${r.latencyMs.p99} ms, max ${r.latencyMs.max} ms`,
    `commands   sent ${r.commands.sent}, received ${r.commands.received}, corrupted ${r.commands.corrupted}, decrypt failures ${r.decryptFailures}`,
    `reconnects ${r.reconnects}; errors ${
      Object.entries(r.errors)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ') || 'none'
    }`,
    r.ok ? 'result     OK' : 'result     FAILED (loss at QoS 1, corruption or decrypt failure)',
  ].join('\n');
}

export async function runSimCommand(argv: string[], io: CliIo): Promise<number> {
  let values;
  let opts;
  try {
    ({ values } = parseArgs({ args: argv, options: OPTIONS, strict: true }));
    if (values.help) {
      io.out(SIM_USAGE);
      return EXIT_OK;
    }
    if (Boolean(values.broker) !== Boolean(values.kms)) throw new UsageError('--broker and --kms go together');
    opts = {
      devices: num(values.devices, 'devices', 1, 100_000),
      durationSec: num(values.duration, 'duration', 1, 86_400),
      rate: num(values.rate, 'rate', 0.01, 1000),
      qos: num(values.qos, 'qos', 0, 1) as 0 | 1,
      commandRate: num(values.commands, 'commands', 0, 10_000),
      ...(values['rotate-after'] ? { rotateAfter: num(values['rotate-after'], 'rotate-after', 1, 1e9) } : {}),
      ...(values.broker && values.kms
        ? { brokerUrl: values.broker, kmsUrl: values.kms, adminToken: adminTokenFrom(values.token, values.data) }
        : {}),
    };
  } catch (err) {
    io.err(`qkey sim: ${(err as Error).message} (see qkey sim --help)`);
    return EXIT_USAGE;
  }
  const live = process.stderr.isTTY && !values.json;
  const report = await runSimulation({
    ...opts,
    onProgress: (p) => {
      const line = `[${p.elapsedSec.toFixed(0)}s] online ${p.online}/${opts.devices}, sent ${p.sent}, received ${p.received}, commands ${p.commands}`;
      if (live) process.stderr.write(`\r${line}   `);
    },
  });
  if (live) process.stderr.write('\n');
  io.out(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.ok ? EXIT_OK : EXIT_FAILURE;
}
