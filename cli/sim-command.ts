// `qkey sim`: simulated terminals and an application against a system, with a report and a CI-friendly exit status.
import { runSimulation, SimSetupError, type SimReport } from '../device-sim/simulation.js';
import { DEFAULT_KMS_URL } from './admin-command.js';
import { adminTokenFrom } from './admin-token.js';
import {
  type CliIo,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_SETUP,
  EXIT_UNREACHABLE,
  EXIT_USAGE,
  intFlag,
  kmsUrlFrom,
  numberFlag,
  parseCommandLine,
  stopRequested,
  UsageError,
  urlFlag,
  wantsHelp,
} from './io.js';

export const SIM_USAGE = `Usage: qkey sim [--devices <n>] [--duration <s>] [--rate <msgs/s>] [--qos 0|1] [--commands <per s>]
                [--rotate-after <n>] [--min-rate <msgs/s>] [--json]
                [--broker <url> --kms <url> [--token <admin token>] [--data <dir>] [--keep-devices]]

Simulates N devices (default 10), each with its own emulated chip filled through the filling machine: log in,
connect, publish telemetry (with a sequence number and send time) for --duration seconds (default 10) at --rate
messages per second per device (default 1), and open commands; an application consumes the decrypted telemetry
and sends --commands commands per second (default 1). Without --broker and --kms it starts its own key service
and broker on free loopback ports.

Devices whose connection is lost (a broker restart) log in again and reconnect with backoff (200 ms doubling to
5 s); the application reconnects every 0.5 s. Reconnects are counted; a device does not send while it or the
application is away. Ctrl-C or SIGTERM ends the run early: the report covers the time run and cleanup
happens as at the end (a second Ctrl-C exits at once). Against a running system (--broker and --kms), the devices and the application the run
registered are revoked at the end unless --keep-devices is given.

The report gives the telemetry rate offered (devices x rate) and achieved (acknowledged at QoS 1, sent at
QoS 0, per second). A run fails when messages are lost at QoS 1, when anything is corrupted or cannot be
decrypted, or when the achieved rate is below --min-rate (default 90% of the offered rate).
  --json           print the report (or the error) as one JSON object
Exit status: 0 ok; 1 the run failed (the report says why); 2 usage error; 3 the key service or the broker could
not be reached; 4 setting up the devices or the application failed.`;

const OPTIONS = {
  devices: { type: 'string', default: '10' },
  duration: { type: 'string', default: '10' },
  rate: { type: 'string', default: '1' },
  qos: { type: 'string', default: '1' },
  commands: { type: 'string', default: '1' },
  'rotate-after': { type: 'string' },
  'min-rate': { type: 'string' },
  'keep-devices': { type: 'boolean' },
  json: { type: 'boolean' },
  broker: { type: 'string' },
  kms: { type: 'string' },
  token: { type: 'string' },
  data: { type: 'string', default: './data' },
  help: { type: 'boolean', short: 'h' },
} as const;

export function formatReport(r: SimReport): string {
  return [
    `devices ${r.devices}, ${r.durationSec} s${r.stoppedAfterSec !== undefined ? ` (stopped after ${r.stoppedAfterSec} s)` : ''}, QoS ${r.qos}`,
    `rate       offered ${r.rate.offered} msgs/s, achieved ${r.rate.achieved} msgs/s (minimum ${r.rate.min})`,
    `telemetry  sent ${r.sent}, received ${r.received}, lost ${r.lost}, duplicated ${r.duplicated}, corrupted ${r.corrupted}`,
    `latency    p50 ${r.latencyMs.p50} ms, p95 ${r.latencyMs.p95} ms, p99 ${r.latencyMs.p99} ms, max ${r.latencyMs.max} ms`,
    `commands   sent ${r.commands.sent}, received ${r.commands.received}, corrupted ${r.commands.corrupted}, decrypt failures ${r.decryptFailures}`,
    `reconnects devices ${r.reconnects}, application ${r.appReconnects}; errors ${
      Object.entries(r.errors)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ') || 'none'
    }`,
    ...(r.revoked > 0 ? [`cleanup    revoked what this run registered: ${r.revoked} devices and applications`] : []),
    r.ok ? 'result     OK' : `result     FAILED: ${r.failures.join('; ')}`,
  ].join('\n');
}

function options(values: ReturnType<typeof parse>['values']) {
  if (Boolean(values.broker) !== Boolean(values.kms)) throw new UsageError('--broker and --kms go together');
  if (values['keep-devices'] && !values.broker) throw new UsageError('--keep-devices needs --broker and --kms');
  const external = values.broker && values.kms;
  return {
    devices: intFlag(values.devices, 'devices', 1, 100_000),
    durationSec: numberFlag(values.duration, 'duration', 1, 86_400),
    rate: numberFlag(values.rate, 'rate', 0.01, 1000),
    qos: intFlag(values.qos, 'qos', 0, 1) as 0 | 1,
    commandRate: numberFlag(values.commands, 'commands', 0, 10_000),
    ...(values['rotate-after'] ? { rotateAfter: intFlag(values['rotate-after'], 'rotate-after', 1, 1e9) } : {}),
    ...(values['min-rate'] !== undefined ? { minRate: numberFlag(values['min-rate'], 'min-rate', 0, 1e8) } : {}),
    ...(external
      ? {
          brokerUrl: urlFlag(values.broker!, 'broker', '--broker'),
          kmsUrl: kmsUrlFrom(values.kms, DEFAULT_KMS_URL),
          adminToken: adminTokenFrom(values.token, values.data).token,
          keepDevices: values['keep-devices'] ?? false,
        }
      : {}),
  };
}

const parse = (argv: string[]) => parseCommandLine(argv, { options: OPTIONS });

export async function runSimCommand(argv: string[], io: CliIo): Promise<number> {
  if (wantsHelp(argv)) {
    io.out(SIM_USAGE);
    return EXIT_OK;
  }
  const json = argv.includes('--json');
  const error = (status: number, code: string, message: string) => {
    if (json) io.out(JSON.stringify({ error: { code, message }, exitStatus: status }, null, 2));
    io.err(`qkey sim: ${message}${status === EXIT_USAGE ? ' (see qkey sim --help)' : ''}`);
    return status;
  };
  let opts;
  try {
    opts = options(parse(argv).values);
  } catch (err) {
    return error(EXIT_USAGE, 'SIM_USAGE', (err as Error).message);
  }
  const live = process.stderr.isTTY && !json;
  const show = (line: string) => live && process.stderr.write(`\r${line}   `);
  let report: SimReport;
  const stop = new AbortController();
  const watch = stopRequested();
  void watch.stopped.then(() => stop.abort());
  try {
    report = await runSimulation({
      ...opts,
      signal: stop.signal,
      onProgress: (p) => {
        if (p.phase === 'provision') show(`provisioning chips ${p.online}/${opts.devices}`);
        else if (p.phase === 'connect') show(`connecting devices ${p.online}/${opts.devices}`);
        else
          show(
            `[${p.elapsedSec.toFixed(0)}s] online ${p.online}/${opts.devices}, sent ${p.sent}, received ${p.received}, commands ${p.commands}`,
          );
      },
    });
  } catch (err) {
    if (live) process.stderr.write('\n');
    if (err instanceof SimSetupError)
      return err.unreachable
        ? error(EXIT_UNREACHABLE, 'SIM_UNREACHABLE', err.message)
        : error(EXIT_SETUP, stop.signal.aborted ? 'SIM_STOPPED' : 'SIM_SETUP_FAILED', err.message);
    return error(EXIT_FAILURE, 'SIM_FAILED', (err as Error).message);
  } finally {
    watch.dispose();
  }
  if (live) process.stderr.write('\n');
  io.out(json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.ok ? EXIT_OK : EXIT_FAILURE;
}
