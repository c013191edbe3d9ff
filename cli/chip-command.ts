// `qkey chip ...`: personalise, fill, inspect and log in with emulated security chips.
import { parseArgs } from 'node:util';
import { SecurityChip } from '../hsm-emulator/chip.js';
import { ChipError } from '../hsm-emulator/chip-errors.js';
import { FillError, FillingMachine } from '../hsm-emulator/filling-machine.js';
import { Qrng, QrngHealthError } from '../hsm-emulator/qrng.js';
import { KmsClient, KmsHttpError, KmsUnreachableError } from '../kms-api/client.js';
import { KMS_DEFAULTS } from '../key-service/config.js';
import { adminTokenFrom, DEFAULT_KMS_URL } from './admin-command.js';
import { type CliIo, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from './io.js';
import { readNewPin, readPin } from './pin.js';

export const CHIP_USAGE = `Usage: qkey chip <command> --chip <file> [options]

Commands:
  init --device <id> [--serial <s>] [--kdf-iterations <n>]   personalise a new, empty chip file
  fill [--up <n>] [--down <n>] [--login-key] [--batch-id <id>] [--top-up <low>:<target>]
                                      draw keys from the QRNG and load the chip and the key service
                                      (all or nothing; rerun with the same --batch-id to resume)
  status [--json]                     device, keys left per pool, sessions (never key bytes)
  login                               prove the login key to the key service; prints an access token

  --chip <file>   the chip file
  --kms <url>     key service (default ${DEFAULT_KMS_URL}; env QKEY_KMS_URL)
  --token <t>     admin token for fill (env QKEY_ADMIN_TOKEN; default: <data>/admin-token)
  --data <dir>    the key service's data folder, to find the admin token (default ./data)
The PIN comes from QKEY_CHIP_PIN, or a prompt on the terminal (init asks twice).`;

const OPTIONS = {
  chip: { type: 'string' },
  device: { type: 'string' },
  serial: { type: 'string' },
  'kdf-iterations': { type: 'string' },
  up: { type: 'string', default: '0' },
  down: { type: 'string', default: '0' },
  'login-key': { type: 'boolean' },
  'batch-id': { type: 'string' },
  'top-up': { type: 'string' },
  kms: { type: 'string' },
  token: { type: 'string' },
  data: { type: 'string', default: KMS_DEFAULTS.dataDir },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function count(value: string, flag: string): number {
  if (!/^\d+$/.test(value) || Number(value) > 1_000_000)
    throw new UsageError(`--${flag} must be an integer in [0, 1000000]`);
  return Number(value);
}

export async function runChipCommand(argv: string[], io: CliIo): Promise<number> {
  let action: string | undefined;
  try {
    const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    action = positionals[0];
    if (values.help || !action) {
      io.out(CHIP_USAGE);
      return values.help ? EXIT_OK : EXIT_USAGE;
    }
    const path = values.chip;
    if (!path) throw new UsageError('missing --chip <file>');
    const kmsUrl = values.kms ?? process.env.QKEY_KMS_URL ?? DEFAULT_KMS_URL;

    switch (action) {
      case 'init': {
        if (!values.device) throw new UsageError('missing --device <id>');
        const pin = await readNewPin();
        const chip = SecurityChip.create(path, {
          deviceId: values.device,
          pin,
          ...(values.serial ? { serial: values.serial } : {}),
          ...(values['kdf-iterations'] ? { kdfIterations: count(values['kdf-iterations'], 'kdf-iterations') } : {}),
        });
        chip.close();
        io.out(`chip ${path} personalised for ${values.device}`);
        return EXIT_OK;
      }
      case 'status': {
        const chip = SecurityChip.open(path, await readPin());
        const s = chip.status();
        chip.close();
        io.out(
          values.json
            ? JSON.stringify(s, null, 2)
            : [
                `device      ${s.deviceId}${s.serial ? ` (serial ${s.serial})` : ''}`,
                `login key   ${s.hasLoginKey ? 'filled' : 'none'}`,
                `uplink      ${s.uplinkKeys} keys left`,
                `downlink    ${s.downlinkKeys} keys held`,
                `next index  ${s.nextKeyIndex}`,
                `batches     ${s.batches}, sessions ${s.sessions}`,
              ].join('\n'),
        );
        return EXIT_OK;
      }
      case 'fill': {
        const chip = SecurityChip.open(path, await readPin());
        try {
          const admin = new KmsClient(kmsUrl, { token: adminTokenFrom(values.token, values.data) });
          const machine = new FillingMachine(new Qrng(), admin);
          const progress = (done: number, total: number) => io.err(`fill ${chip.deviceId}: ${done}/${total} keys`);
          let result;
          if (values['top-up']) {
            const m = /^(\d+):(\d+)$/.exec(values['top-up']);
            if (!m) throw new UsageError('--top-up takes <low-water>:<target>, for example 32:256');
            result = await machine.topUp(chip, Number(m[1]), Number(m[2]));
            if (!result) {
              io.out(`${chip.deviceId}: pools are above the low-water mark; nothing to do`);
              return EXIT_OK;
            }
          } else {
            const up = count(values.up, 'up');
            const down = count(values.down, 'down');
            if (up + down === 0 && !values['login-key'])
              throw new UsageError('nothing to fill: give --up, --down or --login-key');
            result = await machine.fill(chip, {
              up,
              down,
              ...(values['login-key'] ? { loginKey: true } : {}),
              ...(values['batch-id'] ? { batchId: values['batch-id'] } : {}),
              onProgress: up + down >= 1000 ? progress : undefined,
            });
          }
          for (const r of result.recovered) io.out(`recovered half-done batch ${r.batchId}: ${r.action}`);
          const s = chip.status();
          io.out(
            `filled ${chip.deviceId}: ${result.up} uplink and ${result.down} downlink keys${result.loginKey ? ' and a login key' : ''} ` +
              `(batches ${result.batches.join(', ') || 'none'}); chip now holds ${s.uplinkKeys} up, ${s.downlinkKeys} down`,
          );
          return EXIT_OK;
        } finally {
          chip.close();
        }
      }
      case 'login': {
        const chip = SecurityChip.open(path, await readPin());
        try {
          const kms = new KmsClient(kmsUrl);
          const { challenge } = await kms.challenge(chip.deviceId);
          const mac = Buffer.from(chip.loginProof(Buffer.from(challenge, 'base64'))).toString('base64');
          const t = await kms.deviceToken(chip.deviceId, challenge, mac);
          io.out(t.access_token);
          io.err(
            `token for ${chip.deviceId}, valid ${t.expires_in} s (use it as the MQTT password, username = client id = ${chip.deviceId})`,
          );
          return EXIT_OK;
        } finally {
          chip.close();
        }
      }
      default:
        throw new UsageError(`unknown command ${JSON.stringify(action)}`);
    }
  } catch (err) {
    const prefix = `qkey chip${action ? ` ${action}` : ''}`;
    if (err instanceof ChipError || err instanceof KmsHttpError) {
      io.err(`${prefix}: ${err.code}: ${err.message}`);
      return EXIT_FAILURE;
    }
    if (err instanceof QrngHealthError || err instanceof KmsUnreachableError || err instanceof FillError) {
      io.err(`${prefix}: ${err.message}`);
      return EXIT_FAILURE;
    }
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      io.err(`${prefix}: ${(err as Error).message} (see qkey chip --help)`);
      return EXIT_USAGE;
    }
    throw err;
  }
}
