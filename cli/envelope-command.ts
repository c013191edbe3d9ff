// `qkey envelope seal|open`: seal a payload or open an envelope from the command line, for firmware engineers.
import {
  type BackendChoice,
  bytesToHex,
  type Direction,
  getBackend,
  hexToBytes,
  isProtocolError,
  MAX_KEY_INDEX,
  MAX_SEQ,
  openEnvelope,
  parseSuite,
  SUITE_NAMES,
  sealEnvelope,
} from '../protocol/index.js';
import {
  type CliIo,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_USAGE,
  leadingWords,
  narrowUsage,
  parseCommandLine,
  parseUint,
  requireFlag,
  sharedFailure,
  UsageError,
  wantsHelp,
} from './io.js';

export const ENVELOPE_USAGE = `Usage: qkey envelope seal|open [options]

Commands:
  seal --key <hex> --key-index <n> --seq <n> --device <id> --topic <topic> --direction up|down|will
       [--suite <id>] --payload-hex <hex>
                       seal a payload; prints the envelope as hex
  open --key <hex> --device <id> --topic <topic> --direction up|down|will --envelope-hex <hex>
       [--key-index <n>] [--seq <n>] [--suite <id>]
                       open an envelope; prints the payload as hex

  --key <hex>          SM4 key, 32 hex digits
  --key-index <n>      key index carried in the envelope (0..${MAX_KEY_INDEX}); open checks it if given
  --seq <n>            sequence number (0..${MAX_SEQ}); open checks it if given
  --device <id>        device id (MQTT client id), bound into the AAD
  --topic <topic>      MQTT topic the envelope travels on, bound into the AAD
  --direction up|down|will  up = device to broker, down = broker to device, will = a device will
  --suite <id>         1 or SM4-GCM (default), 2 or SM4-CTR-HMAC-SM3; open accepts only this suite if given
  --backend <name>     auto (default), native (OpenSSL) or portable (sm-crypto)
Exit status: 0 ok, 1 the envelope was refused (the reason names the error code), 2 usage error.`;

const OPTIONS = {
  key: { type: 'string' },
  'key-index': { type: 'string' },
  seq: { type: 'string' },
  device: { type: 'string' },
  topic: { type: 'string' },
  direction: { type: 'string' },
  suite: { type: 'string' },
  'payload-hex': { type: 'string' },
  'envelope-hex': { type: 'string' },
  backend: { type: 'string', default: 'auto' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseDirection(value: string | undefined): Direction {
  if (value === 'up' || value === 'down' || value === 'will' || value === 'app-up' || value === 'app-down')
    return value;
  throw new UsageError('--direction must be up, down, will, app-up or app-down');
}

function parseBackend(value: string): BackendChoice {
  if (value === 'auto' || value === 'native' || value === 'portable') return value;
  throw new UsageError('--backend must be auto, native or portable');
}

function hexFlag(value: string | undefined, flag: string): Uint8Array {
  if (value === undefined) throw new UsageError(`missing --${flag}`);
  const text = value;
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(text)) throw new UsageError(`--${flag} must be an even number of hex digits`);
  return hexToBytes(text);
}

export async function runEnvelopeCommand(argv: string[], io: CliIo): Promise<number> {
  const [action, ...rest] = argv;
  if (wantsHelp(argv)) {
    io.out(narrowUsage(ENVELOPE_USAGE, 'envelope', leadingWords(argv)));
    return EXIT_OK;
  }
  try {
    if (action === undefined) {
      io.err(ENVELOPE_USAGE);
      return EXIT_USAGE;
    }
    if (action !== 'seal' && action !== 'open')
      throw new UsageError(`unknown action ${JSON.stringify(action)} (expected seal or open)`);
    const { values } = parseCommandLine(rest, { options: OPTIONS });
    const key = hexFlag(values.key, 'key');
    if (key.length !== 16) throw new UsageError('--key must be 16 bytes (32 hex digits)');
    const context = {
      key,
      deviceId: requireFlag(values.device, 'device'),
      topic: requireFlag(values.topic, 'topic'),
      direction: parseDirection(values.direction),
      backend: getBackend(parseBackend(values.backend)),
    };
    const suite = values.suite === undefined ? undefined : parseSuite(values.suite);
    if (action === 'seal') {
      const payload = hexFlag(values['payload-hex'], 'payload-hex');
      const envelope = sealEnvelope(payload, {
        ...context,
        keyIndex: parseUint(values['key-index'], 'key-index', MAX_KEY_INDEX),
        seq: parseUint(values.seq, 'seq', MAX_SEQ),
        ...(suite === undefined ? {} : { suite }),
      });
      io.out(bytesToHex(envelope));
      return EXIT_OK;
    }
    if (action === 'open') {
      const envelope = hexFlag(values['envelope-hex'], 'envelope-hex');
      const { header, payload } = openEnvelope(envelope, {
        ...context,
        ...(suite === undefined ? {} : { allowedSuites: [suite] }),
      });
      if (
        values['key-index'] !== undefined &&
        header.keyIndex !== parseUint(values['key-index'], 'key-index', MAX_KEY_INDEX)
      ) {
        io.err(`qkey envelope open: key index mismatch: envelope carries ${header.keyIndex}`);
        return EXIT_FAILURE;
      }
      if (values.seq !== undefined && header.seq !== parseUint(values.seq, 'seq', MAX_SEQ)) {
        io.err(`qkey envelope open: sequence number mismatch: envelope carries ${header.seq}`);
        return EXIT_FAILURE;
      }
      io.err(`# suite ${SUITE_NAMES[header.suite]}, key index ${header.keyIndex}, seq ${header.seq}`);
      io.out(bytesToHex(payload));
      return EXIT_OK;
    }
    throw new UsageError(`unknown action ${JSON.stringify(action)} (expected seal or open)`);
  } catch (err) {
    if (isProtocolError(err)) {
      io.err(`qkey envelope ${action}: ${err.code}: ${err.message}`);
      return EXIT_FAILURE;
    }
    const status = sharedFailure(err, 'qkey envelope', io);
    if (status !== undefined) return status;
    throw err;
  }
}
