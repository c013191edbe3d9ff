// `qkey kms`: run the key service; `qkey kms init`: create a new one; `qkey kms rotate-master-key`: rewrap every
// stored key under a new master key.
import { join } from 'node:path';
import { createWriteStream, type WriteStream } from 'node:fs';
import { type KmsOverrides, loadKmsConfig } from '../key-service/config.js';
import { checkDataDir, ensureDataDir, initDataDir, openDataDir } from '../key-service/data-dir.js';
import { lockDataDir } from '../key-service/lock.js';
import { rotateMasterKey } from '../key-service/master-key.js';
import { ADMIN_TOKEN_FILE } from '../common/admin-token.js';
import { startKms } from '../key-service/server.js';
import {
  type CliIo,
  EXIT_OK,
  leadingWords,
  narrowUsage,
  parseCommandLine,
  stopRequested,
  UsageError,
  wantsHelp,
} from './io.js';

export const KMS_USAGE = `Usage: qkey kms [--init] [options]       run the key service until Ctrl-C
       qkey kms init [--data <dir>] [--config <file>]
       qkey kms rotate-master-key [--data <dir>] [--config <file>]

Commands:
  init [--data <dir>] [--config <file>]
                      create a new key service in the data folder (master key, database, admin token) and
                      print what it created; it never touches a folder that already holds one
  rotate-master-key [--data <dir>] [--config <file>]
                      on a stopped service: rewrap every stored key under a new master key

Without a command, runs the key service (ETSI GS QKD 014 key delivery, login, admin API) until Ctrl-C; it
refuses a missing, empty or damaged data folder and says what is missing.
  --init              create the key service first if the data folder holds none yet (as init does)
  --host <addr>       listen address (default 127.0.0.1; env QKEY_KMS_HOST)
  --port <n>          TCP port, 0 for any free one (default 7070; env QKEY_KMS_PORT)
  --data <dir>        database, master key and admin token folder (default ./data; env QKEY_KMS_DATA)
  --config <file>     JSON configuration file (env QKEY_KMS_CONFIG); see README "Configuration"
  --log-level <level> pino level: fatal, error, warn, info, debug, trace, silent (default info); each request
                      is logged at debug, so info shows starts, stops, warnings and errors
  --log-file <file>   append the JSON log to this file (created 0600) instead of writing it to stdout
  --cors-origin <origin>
                      a web page origin (https://app.example) whose pages may call the application-session
                      routes from a browser; repeatable (default: none, pages elsewhere cannot)
Exit status: 0 ok (stopped by Ctrl-C or SIGTERM), 1 failed (the message names the folder or setting), 2 usage.`;

const OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  data: { type: 'string' },
  config: { type: 'string' },
  'log-level': { type: 'string' },
  'log-file': { type: 'string' },
  'cors-origin': { type: 'string', multiple: true },
  init: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function overridesFrom(values: {
  host?: string;
  port?: string;
  data?: string;
  'log-level'?: string;
  'cors-origin'?: string[];
}): KmsOverrides {
  const o: KmsOverrides = {};
  if (values['cors-origin'] !== undefined) o.corsOrigins = values['cors-origin'];
  if (values.host !== undefined) o.host = values.host;
  // Only the spelling is checked here; the range with every other source against the schema (loadKmsConfig).
  if (values.port !== undefined) {
    if (!/^\d+$/.test(values.port))
      throw new UsageError(`--port must be a whole number from 0 to 65535, not ${JSON.stringify(values.port)}`);
    o.port = Number(values.port);
  }
  if (values.data !== undefined) o.dataDir = values.data;
  // Checked with every other source against the schema (loadKmsConfig), which names what is allowed.
  if (values['log-level'] !== undefined) o.logLevel = values['log-level'] as KmsOverrides['logLevel'];
  return o;
}

/** An append-only log file, created 0600 (the log names devices and sources). */
function logFile(path: string): WriteStream {
  const stream = createWriteStream(path, { flags: 'a', mode: 0o600 });
  stream.on('error', (err) => process.stderr.write(`qkey kms: cannot write the log file ${path}: ${err.message}\n`));
  return stream;
}

export async function runKmsCommand(argv: string[], io: CliIo): Promise<number> {
  if (wantsHelp(argv)) {
    io.out(narrowUsage(KMS_USAGE, 'kms', leadingWords(argv)));
    return EXIT_OK;
  }
  const { values, positionals } = parseCommandLine(argv, { options: OPTIONS, allowPositionals: true });
  const overrides = overridesFrom(values);
  if (positionals.length > 1 || (positionals[0] && !['init', 'rotate-master-key'].includes(positionals[0]))) {
    throw new UsageError(`unknown action ${JSON.stringify(positionals.join(' '))}`);
  }
  const config = loadKmsConfig(overrides, { configFile: values.config });
  if (positionals[0] === 'init') {
    const created = initDataDir(config.dataDir, { adminToken: config.adminToken });
    io.out(`qkey kms init: created a new key service in ${config.dataDir}:`);
    for (const item of created) io.out(`  ${item}`);
    io.out('Back up the folder as a whole: the database is useless without its master key.');
    return EXIT_OK;
  }
  if (values.init) {
    for (const item of ensureDataDir(config.dataDir, { adminToken: config.adminToken }))
      io.out(`qkey kms: created ${item}`);
  }
  checkDataDir(config.dataDir);
  const release = lockDataDir(config.dataDir);

  if (positionals[0] === 'rotate-master-key') {
    try {
      const db = openDataDir(config.dataDir);
      try {
        const r = rotateMasterKey(db, config.dataDir);
        io.out(
          `qkey kms: master key rotated from version ${r.from} to ${r.to}; ${r.rewrapped} wrapped secrets rewritten`,
        );
      } finally {
        db.close();
      }
      return EXIT_OK;
    } finally {
      release();
    }
  }

  let kms;
  try {
    kms = await startKms(config, values['log-file'] ? { logStream: logFile(values['log-file']) } : {});
  } catch (err) {
    release();
    throw err;
  }
  io.out(
    `qkey kms listening on ${kms.url} (data ${config.dataDir}${config.adminToken ? '' : `, admin token in ${join(config.dataDir, ADMIN_TOKEN_FILE)}`})`,
  );
  const signal = await stopRequested().stopped;
  io.out('qkey kms: stopping');
  kms.app.log.info({ signal }, 'stopping'); // the log (and --log-file) records stops as well as starts
  await kms.close();
  release();
  return EXIT_OK;
}
