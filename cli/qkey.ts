// `qkey`: the one command-line entry point; dispatches to the subcommand modules.
import { runAdminCommand } from './admin-command.js';
import { runBrokerCommand } from './broker-command.js';
import { runChipCommand } from './chip-command.js';
import { runDemoCommand } from './demo-command.js';
import { runDeviceCommand } from './device-command.js';
import { runEnvelopeCommand } from './envelope-command.js';
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, processIo } from './io.js';
import { runKmsCommand } from './kms-command.js';
import { runSimCommand } from './sim-command.js';

type Command = (argv: string[], io: CliIo) => Promise<number>;

const COMMANDS: Record<string, { run: Command; summary: string }> = {
  kms: { run: runKmsCommand, summary: 'run the key-management service, or rotate its master key' },
  broker: { run: runBrokerCommand, summary: 'run the MQTT broker (Aedes + QKey plugin)' },
  admin: { run: runAdminCommand, summary: 'administer devices, apps, brokers, pools and the audit log' },
  chip: { run: runChipCommand, summary: 'personalise, fill, inspect and log in with emulated security chips' },
  device: { run: runDeviceCommand, summary: 'act as a device with a chip file: publish one sealed message, or listen' },
  envelope: { run: runEnvelopeCommand, summary: 'seal or open a payload envelope (for firmware engineers)' },
  sim: { run: runSimCommand, summary: 'simulate devices and an application against a system; report and exit status' },
  demo: { run: runDemoCommand, summary: 'run the system with demo devices (what `npm start` runs)' },
};

export const USAGE = `Usage: qkey <command> [options]

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

Run qkey <command> --help for a command's options.`;

export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out(USAGE);
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.err(`qkey: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    io.err(`qkey ${name}: ${(err as Error).message}`);
    return EXIT_FAILURE;
  }
}
