// The key service's data folder: created only by an explicit init, checked for damage before every start (never
// repaired by starting over), and kept private: the folder 0700, the database and its WAL and SHM files 0600.
import {
  chmodSync,
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import { type Db, openDatabase } from './db.js';
import { lockDataDir } from './lock.js';
import { createMasterKey, MASTER_KEY_FILE } from './master-key.js';
import { ADMIN_TOKEN_FILE } from '../common/admin-token.js';
import { loadAdminToken, loadSigningKey } from './secrets.js';

export const DB_FILE = 'kms.db';
/** Present while `init` runs: a folder holding it was never a working key service, and init may start over. */
export const INIT_MARKER = 'init-incomplete';
const DB_FILES = [DB_FILE, `${DB_FILE}-wal`, `${DB_FILE}-shm`];

/** Why a data folder cannot be used; each code is stable and listed in README ("Data folder"). */
export const DATA_DIR_ERRORS = {
  KMS_DATA_ERR_NO_FOLDER: 'does not exist; create a key service there with `qkey kms init`',
  KMS_DATA_ERR_NOT_A_FOLDER: 'is not a folder',
  KMS_DATA_ERR_NOT_INITIALISED: 'holds no key service (no kms.db, no master key); create one with `qkey kms init`',
  KMS_DATA_ERR_INIT_INCOMPLETE: 'holds an interrupted initialisation; run `qkey kms init` again to start it over',
  KMS_DATA_ERR_NO_DATABASE: 'has a master key but no database (kms.db); restore kms.db from a backup',
  KMS_DATA_ERR_EMPTY_DATABASE: 'has an empty database (kms.db is 0 bytes); restore kms.db from a backup',
  KMS_DATA_ERR_NOT_A_DATABASE: 'has a kms.db that is not a key-service database',
  KMS_DATA_ERR_NO_MASTER_KEY: 'has a database but not its master key; restore the master key file from a backup',
  KMS_DATA_ERR_EXISTS: 'already holds a key service (or part of one); init never overwrites it',
} as const;

export type DataDirErrorCode = keyof typeof DATA_DIR_ERRORS;

export class DataDirError extends Error {
  override name = 'DataDirError';
  constructor(
    readonly code: DataDirErrorCode,
    readonly dir: string,
    detail?: string,
  ) {
    super(`${code}: data folder ${dir} ${DATA_DIR_ERRORS[code]}${detail ? ` (${detail})` : ''}; nothing was changed`);
  }
}

function sizeOf(path: string): number | undefined {
  try {
    return statSync(path).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function masterKeyFiles(dir: string): string[] {
  return readdirSync(dir).filter((f) => /^master-key\.v\d+$/.test(f));
}

/** Throws a DataDirError unless `dir` holds a complete key service. Reads only; changes nothing. */
export function checkDataDir(dir: string): void {
  let stat;
  try {
    stat = lstatSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DataDirError('KMS_DATA_ERR_NO_FOLDER', dir);
    throw err;
  }
  if (!stat.isDirectory()) throw new DataDirError('KMS_DATA_ERR_NOT_A_FOLDER', dir);
  if (sizeOf(join(dir, INIT_MARKER)) !== undefined) throw new DataDirError('KMS_DATA_ERR_INIT_INCOMPLETE', dir);
  const dbSize = sizeOf(join(dir, DB_FILE));
  const keys = masterKeyFiles(dir);
  if (dbSize === undefined)
    throw new DataDirError(keys.length ? 'KMS_DATA_ERR_NO_DATABASE' : 'KMS_DATA_ERR_NOT_INITIALISED', dir);
  if (dbSize === 0) throw new DataDirError('KMS_DATA_ERR_EMPTY_DATABASE', dir);
  if (!keys.length) throw new DataDirError('KMS_DATA_ERR_NO_MASTER_KEY', dir, 'no master-key.vN file');
}

/** The folder 0700 and the database files 0600, whatever the umask was and whoever created them. */
function makePrivate(dir: string): void {
  chmodSync(dir, 0o700);
  for (const f of DB_FILES) if (sizeOf(join(dir, f)) !== undefined) chmodSync(join(dir, f), 0o600);
}

/** Opens the database of a checked data folder; a file SQLite cannot read, or an empty schema, is refused. */
export function openDataDir(dir: string): Db {
  checkDataDir(dir);
  makePrivate(dir);
  let db: Db;
  try {
    db = openDatabase(join(dir, DB_FILE), { create: false });
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT' || code === 'KMS_DB_EMPTY_SCHEMA')
      throw new DataDirError('KMS_DATA_ERR_NOT_A_DATABASE', dir, (err as Error).message);
    throw err;
  }
  makePrivate(dir); // a WAL or SHM file SQLite just created
  const kek = db.prepare(`SELECT value FROM meta WHERE name = 'kek_version'`).get() as { value: string } | undefined;
  const keyFile = kek && MASTER_KEY_FILE(Number(kek.value));
  if (!keyFile || sizeOf(join(dir, keyFile)) === undefined) {
    db.close();
    if (!keyFile) throw new DataDirError('KMS_DATA_ERR_NOT_A_DATABASE', dir, 'it records no master key version');
    throw new DataDirError('KMS_DATA_ERR_NO_MASTER_KEY', dir, `${keyFile} is missing`);
  }
  return db;
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export type InitStep = 'marker' | 'master-key' | 'database' | 'admin-token';

export interface InitOptions {
  /** An admin token from configuration: no admin-token file is created. */
  adminToken?: string | undefined;
  /** Test hook: called after each step; throwing there stands for the process dying at that point. */
  afterStep?: (step: InitStep) => void;
}

/**
 * Creates a key service in `dir` (created 0700 if absent; an existing folder must not hold one yet): master key,
 * database, token-signing key, admin token. A marker file stands while it runs, so an interrupted init is refused
 * at start and started over by the next init. Returns what it created.
 */
export function initDataDir(dir: string, options: InitOptions = {}): string[] {
  dir = resolve(dir);
  const created: string[] = [];
  if (mkdirSync(dir, { recursive: true, mode: 0o700 }) !== undefined) created.push(`${dir}/ (folder, 0700)`);
  if (!lstatSync(dir).isDirectory()) throw new DataDirError('KMS_DATA_ERR_NOT_A_FOLDER', dir);
  chmodSync(dir, 0o700);
  const release = lockDataDir(dir);
  try {
    const ours = (f: string) => DB_FILES.includes(f) || f === ADMIN_TOKEN_FILE || /^master-key\.v\d+$/.test(f);
    const present = readdirSync(dir).filter(ours);
    if (sizeOf(join(dir, INIT_MARKER)) !== undefined) {
      // Left by an init that died: nothing ever ran on these files.
      for (const f of present) rmSync(join(dir, f));
    } else if (present.length) {
      throw new DataDirError('KMS_DATA_ERR_EXISTS', dir, `found ${present.join(', ')}`);
    }
    closeSync(openSync(join(dir, INIT_MARKER), 'w', 0o600));
    fsyncDir(dir);
    options.afterStep?.('marker');

    const db = openDatabase(join(dir, DB_FILE), { create: true });
    try {
      const master = createMasterKey(db, dir);
      options.afterStep?.('master-key');
      created.push(`${join(dir, MASTER_KEY_FILE(master.version))} (master key, 0600)`);
      loadSigningKey(db, master);
      master.destroy();
      created.push(`${join(dir, DB_FILE)} (database with the token-signing key, 0600)`);
    } finally {
      db.close();
    }
    makePrivate(dir);
    options.afterStep?.('database');
    if (!options.adminToken) {
      loadAdminToken(dir);
      created.push(`${join(dir, ADMIN_TOKEN_FILE)} (admin token, 0600)`);
    }
    options.afterStep?.('admin-token');
    fsyncDir(dir);
    rmSync(join(dir, INIT_MARKER));
    fsyncDir(dir);
  } finally {
    release();
  }
  return created;
}

/** For the demo, `qkey kms --init` and local systems: init when there is no key service yet, else check it. */
export function ensureDataDir(dir: string, options: InitOptions = {}): string[] {
  try {
    checkDataDir(dir);
    return [];
  } catch (err) {
    const fresh: DataDirErrorCode[] = [
      'KMS_DATA_ERR_NO_FOLDER',
      'KMS_DATA_ERR_NOT_INITIALISED',
      'KMS_DATA_ERR_INIT_INCOMPLETE',
    ];
    if (err instanceof DataDirError && fresh.includes(err.code)) return initDataDir(dir, options);
    throw err;
  }
}
