// `qkey`: the one command-line entry point; dispatches to the subcommand modules.
import { readFileSync } from 'node:fs';
import { runAdminCommand } from './admin-command.js';
import { runBrokerCommand } from './broker-command.js';
import { runChipCommand } from './chip-command.js';
import { runDemoCommand } from './demo-command.js';
import { runDeviceCommand } from './device-command.js';
import { runEnvelopeCommand } from './envelope-command.js';
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, processIo, sharedFailure } from './io.js';
import { runKmsCommand } from './kms-command.js';
import { runSimCommand } from './sim-command.js';

type Command = (argv: string[], io: CliIo) => Promise<number>;

const COMMANDS: Record<string, { run: Command; summary: string }> = {
  kms: { run: runKmsCommand, summary: 'run the key-management service, create one (init), or rotate its master key' },
  broker: { run: runBrokerCommand, summary: 'run the MQTT 3.1.1 broker (Aedes + QKey plugin)' },
  admin: {
    run: runAdminCommand,
    summary: 'administer devices, apps, brokers, pools, policies, app keys and the audit log',
  },
  chip: { run: runChipCommand, summary: 'personalise, fill, inspect and log in with emulated security chips' },
  device: { run: runDeviceCommand, summary: 'act as a device with a chip file: publish one sealed message, or listen' },
  envelope: { run: runEnvelopeCommand, summary: 'seal or open a payload envelope (for firmware engineers)' },
  sim: { run: runSimCommand, summary: 'simulate devices and an application against a system; report and exit status' },
  demo: { run: runDemoCommand, summary: 'run the system with demo devices (what `npm start` runs)' },
};

export const EXIT_STATUS_HELP = `Exit status (every command): 0 ok; 1 refused, lost or failed; 2 usage error; 3 key service or broker
unreachable; 4 setup failed (qkey sim could not provision its devices).`;

export const USAGE = `Usage: qkey <command> [options]
       qkey help <command> | qkey <command> --help | qkey --version

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

${EXIT_STATUS_HELP}`;

/** The package's version, from package.json next to dist/ (built) or next to cli/ (run from source). */
export function packageVersion(): string {
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'qkey-mqtt' && pkg.version) return pkg.version;
    } catch {
      // not this one
    }
  }
  return 'unknown';
}

export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const [first, ...rest] = argv;
  if (first === '--version' || first === '-V' || first === 'version') {
    io.out(`qkey ${packageVersion()} (qkey-mqtt, Node.js ${process.version})`);
    return EXIT_OK;
  }
  // `qkey help <command> [<subcommand>]` is `qkey <command> [<subcommand>] --help`.
  const [name, args] = first === 'help' && rest.length > 0 ? [rest[0]!, [...rest.slice(1), '--help']] : [first, rest];
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    if (name === undefined) io.err(USAGE);
    else io.out(USAGE);
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.err(`qkey: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  try {
    return await command.run(args, io);
  } catch (err) {
    const shared = sharedFailure(err, `qkey ${name}`, io);
    if (shared !== undefined) return shared;
    io.err(`qkey ${name}: ${(err as Error).message}`);
    return EXIT_FAILURE;
  }
}
