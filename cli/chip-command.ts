// `qkey chip ...`: personalise, fill, inspect and log in with emulated security chips.
import { SecurityChip } from '../hsm-emulator/chip.js';
import { ChipError } from '../hsm-emulator/chip-errors.js';
import {
  type FillCrashPoint,
  FillError,
  type FillEvent,
  FillingMachine,
  MAX_BATCH_KEYS,
} from '../hsm-emulator/filling-machine.js';
import { loadIssuerKey } from '../hsm-emulator/issuer-key.js';
import { Qrng, QrngHealthError } from '../hsm-emulator/qrng.js';
import { KmsClient } from '../kms-api/client.js';
import { KMS_DEFAULTS } from '../key-service/config.js';
import { parseSuite, type SuiteId } from '../protocol/index.js';
import { DEFAULT_KMS_URL } from './admin-command.js';
import { adminTokenFrom, namedAdminRefusal } from './admin-token.js';
import {
  type CliIo,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_USAGE,
  idArgument,
  intFlag,
  kmsUrlFrom,
  leadingWords,
  narrowUsage,
  parseCommandLine,
  sharedFailure,
  UsageError,
  wantsHelp,
} from './io.js';
import { readNewPin, readPin } from './pin.js';

export const CHIP_USAGE = `Usage: qkey chip <command> --chip <file> [options]

Commands:
  init --device <id> [--serial <s>] [--kdf-iterations <n>] [--suites 1,2]
                                      personalise a new, empty chip file; --suites 2 emulates a chip
                                      without GHASH (SM4-CTR-HMAC-SM3 only)
  fill [--up <n>] [--down <n>] [--login-key] [--batch-id <id>] [--top-up <low>:<target>]
                                      draw keys from the QRNG and load the chip and the key service in
                                      batches of at most ${MAX_BATCH_KEYS} keys, all or nothing per batch; the fill
                                      id and each batch id are printed before anything is written. If a
                                      run stops half-way, run the same command again: it commits or
                                      cancels the half-done batch and finishes that fill (a different
                                      --up/--down closes it and starts the new one). --batch-id names
                                      the fill (batches are <id>.<first key index>)
  status [--json]                     device, keys left per pool, sessions, transport key (never key bytes)
  login                               prove the login key to the key service; prints an access token

  --chip <file>   the chip file
  --kms <url>     key service (default ${DEFAULT_KMS_URL}; env QKEY_KMS_URL)
  --token <t>     admin token for fill (env QKEY_ADMIN_TOKEN; default: <data>/admin-token)
  --data <dir>    the key service's data folder: admin token, and the filling station's batch-signing
                  key fill-issuer.sm2 (created on first use; default ./data)
The PIN comes from QKEY_CHIP_PIN, or a prompt on the terminal (init asks twice).
Exit status: 0 ok, 1 refused (the chip's or the key service's error code is printed), 2 usage error, 3 key
service unreachable.`;

const OPTIONS = {
  chip: { type: 'string' },
  device: { type: 'string' },
  serial: { type: 'string' },
  'kdf-iterations': { type: 'string' },
  suites: { type: 'string' },
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
  return intFlag(value, flag, 0, 1_000_000);
}

function suiteList(value: string): SuiteId[] {
  try {
    return value.split(',').map((s) => parseSuite(s.trim()));
  } catch {
    throw new UsageError('--suites takes a list of suite ids, for example 1,2 or 2');
  }
}

function describeFillEvent(e: FillEvent): string {
  if (e.kind === 'plan')
    return `fill ${e.fillId}: ${e.up} uplink and ${e.down} downlink keys${e.loginKey ? ' and a login key' : ''}${e.resumed ? ' (resuming an unfinished fill)' : ''}`;
  const last = e.firstIndex + e.up + e.down - 1;
  return `batch ${e.batchId}: ${e.up} up, ${e.down} down${e.loginKey ? ', login key' : ''}${e.up + e.down > 0 ? `, key indices ${e.firstIndex}..${last}` : ''}`;
}

/** Test hook: QKEY_TEST_FILL_CRASH=<point> kills this process with SIGKILL at that point of a fill. */
function crashHook(point: string | undefined): { crashPoint?: (p: FillCrashPoint) => void } {
  if (!point) return {};
  return {
    crashPoint: (p) => {
      if (p === point) process.kill(process.pid, 'SIGKILL');
    },
  };
}

export async function runChipCommand(argv: string[], io: CliIo): Promise<number> {
  if (wantsHelp(argv)) {
    io.out(narrowUsage(CHIP_USAGE, 'chip', leadingWords(argv)));
    return EXIT_OK;
  }
  let action: string | undefined;
  let token: ReturnType<typeof adminTokenFrom> | undefined;
  try {
    const { values, positionals } = parseCommandLine(argv, { options: OPTIONS, allowPositionals: true });
    action = positionals[0];
    if (!action) {
      io.err(CHIP_USAGE);
      return EXIT_USAGE;
    }
    const path = values.chip;
    if (!path) throw new UsageError('missing --chip <file>');
    const kmsUrl = kmsUrlFrom(values.kms, DEFAULT_KMS_URL);

    switch (action) {
      case 'init': {
        if (!values.device) throw new UsageError('missing --device <id>');
        const deviceId = idArgument(values.device, 'device id');
        const pin = await readNewPin();
        const chip = SecurityChip.create(path, {
          deviceId,
          pin,
          ...(values.serial ? { serial: values.serial } : {}),
          ...(values['kdf-iterations'] ? { kdfIterations: count(values['kdf-iterations'], 'kdf-iterations') } : {}),
          ...(values.suites ? { suites: suiteList(values.suites) } : {}),
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
                `suites      ${s.suites.join(', ')}`,
                `transport   ${s.transportKey}`,
                ...(s.fill
                  ? [
                      `unfinished  fill ${s.fill.id}: ${s.fill.loaded.up}/${s.fill.up} up, ${s.fill.loaded.down}/${s.fill.down} down loaded (run the fill again to finish it)`,
                    ]
                  : []),
              ].join('\n'),
        );
        return EXIT_OK;
      }
      case 'fill': {
        // Every argument is checked before the PIN is asked for.
        const topUp = values['top-up'] === undefined ? undefined : /^(\d+):(\d+)$/.exec(values['top-up']);
        if (topUp === null) throw new UsageError('--top-up takes <low-water>:<target>, for example 32:256');
        const up = count(values.up, 'up');
        const down = count(values.down, 'down');
        if (!topUp && up + down === 0 && !values['login-key'])
          throw new UsageError('nothing to fill: give --up, --down or --login-key');
        token = adminTokenFrom(values.token, values.data);
        const chip = SecurityChip.open(path, await readPin());
        try {
          const admin = new KmsClient(kmsUrl, { token: token.token });
          const machine = new FillingMachine(new Qrng(), admin, {
            issuer: () => loadIssuerKey(values.data),
            onEvent: (e) => io.out(describeFillEvent(e)),
            ...crashHook(process.env.QKEY_TEST_FILL_CRASH),
          });
          const progress = (done: number, total: number) => io.err(`fill ${chip.deviceId}: ${done}/${total} keys`);
          let result;
          if (topUp) {
            result = await machine.topUp(chip, Number(topUp[1]), Number(topUp[2]));
            if (!result) {
              io.out(`${chip.deviceId}: pools are above the low-water mark; nothing to do`);
              return EXIT_OK;
            }
          } else {
            result = await machine.fill(chip, {
              up,
              down,
              ...(values['login-key'] ? { loginKey: true } : {}),
              ...(values['batch-id'] ? { batchId: values['batch-id'] } : {}),
              onProgress: up + down >= 1000 ? progress : undefined,
            });
          }
          for (const r of result.recovered) io.out(`recovered half-done batch ${r.batchId}: ${r.action}`);
          if (result.abandoned)
            io.out(
              `closed unfinished fill ${result.abandoned.fillId} with the ${result.abandoned.up} up and ${result.abandoned.down} down keys it had loaded`,
            );
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
    const failed = token ? namedAdminRefusal(err, token) : err;
    if (failed instanceof ChipError) {
      io.err(`${prefix}: ${failed.code}: ${failed.message}`);
      return EXIT_FAILURE;
    }
    if (failed instanceof QrngHealthError || failed instanceof FillError) {
      io.err(`${prefix}: ${failed.message}`);
      return EXIT_FAILURE;
    }
    const status = sharedFailure(failed, prefix, io);
    if (status !== undefined) return status;
    throw failed;
  }
}
