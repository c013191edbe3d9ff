// `qkey kms`: run the key service; `qkey kms rotate-master-key`: rewrap every stored key under a new master key.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DB_FILE } from '../key-service/app.js';
import { type KmsOverrides, loadKmsConfig } from '../key-service/config.js';
import { openDatabase } from '../key-service/db.js';
import { lockDataDir } from '../key-service/lock.js';
import { rotateMasterKey } from '../key-service/master-key.js';
import { ADMIN_TOKEN_FILE } from '../common/admin-token.js';
import { startKms } from '../key-service/server.js';
import { type CliIo, EXIT_OK, EXIT_USAGE, UsageError } from './io.js';

export const KMS_USAGE = `Usage:
  qkey kms [--host <addr>] [--port <n>] [--data <dir>] [--config <file>] [--log-level <level>]
  qkey kms rotate-master-key [--data <dir>] [--config <file>]

Runs the key-management service (ETSI GS QKD 014 key delivery, login, admin API) until Ctrl-C.
  --host <addr>       listen address (default 127.0.0.1; env QKEY_KMS_HOST)
  --port <n>          TCP port, 0 for any free one (default 7070; env QKEY_KMS_PORT)
  --data <dir>        database, master key and admin token folder (default ./data; env QKEY_KMS_DATA)
  --config <file>     JSON configuration file (env QKEY_KMS_CONFIG); see README "Configuration"
  --log-level <level> pino level: fatal, error, warn, info, debug (default info)
rotate-master-key works on a stopped service: it rewraps every stored key under a new master key.`;

const OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  data: { type: 'string' },
  config: { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

function overridesFrom(values: { host?: string; port?: string; data?: string; 'log-level'?: string }): KmsOverrides {
  const o: KmsOverrides = {};
  if (values.host !== undefined) o.host = values.host;
  if (values.port !== undefined) {
    if (!/^\d+$/.test(values.port)) throw new UsageError('--port must be a number');
    o.port = Number(values.port);
  }
  if (values.data !== undefined) o.dataDir = values.data;
  if (values['log-level'] !== undefined) o.logLevel = values['log-level'];
  return o;
}

export async function runKmsCommand(argv: string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    io.err(`qkey kms: ${(err as Error).message} (see qkey kms --help)`);
    return EXIT_USAGE;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(KMS_USAGE);
    return EXIT_OK;
  }
  let overrides: KmsOverrides;
  try {
    overrides = overridesFrom(values);
    if (positionals.length > 1 || (positionals[0] && positionals[0] !== 'rotate-master-key')) {
      throw new UsageError(`unknown action ${JSON.stringify(positionals.join(' '))}`);
    }
  } catch (err) {
    io.err(`qkey kms: ${(err as Error).message} (see qkey kms --help)`);
    return EXIT_USAGE;
  }
  const config = loadKmsConfig(overrides, { configFile: values.config });
  const release = lockDataDir(config.dataDir);

  if (positionals[0] === 'rotate-master-key') {
    try {
      const db = openDatabase(join(config.dataDir, DB_FILE));
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
    kms = await startKms(config);
  } catch (err) {
    release();
    throw err;
  }
  io.out(
    `qkey kms listening on ${kms.url} (data ${config.dataDir}${config.adminToken ? '' : `, admin token in ${join(config.dataDir, ADMIN_TOKEN_FILE)}`})`,
  );
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  io.out('qkey kms: stopping');
  await kms.close();
  release();
  return EXIT_OK;
}
