// Opens the key store: SQLite in WAL mode with synchronous=FULL (claims must survive power loss), then migrates.
import { chmodSync, closeSync, openSync } from 'node:fs';
import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations.js';

export type Db = Database.Database;

/**
 * Opens `file`: a new database only with `create` (the file must not exist yet; it is made 0600 before SQLite
 * writes to it, and its WAL and SHM files take that mode), else an existing one with a schema, never an empty one.
 */
export function openDatabase(file: string, { create }: { create: boolean }): Db {
  if (create && file !== ':memory:') {
    closeSync(openSync(file, 'wx', 0o600));
    chmodSync(file, 0o600);
  }
  const db = new Database(file, { fileMustExist: file !== ':memory:' });
  try {
    prepare(db, create);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

function prepare(db: Db, create: boolean): void {
  // Read before anything writes: a database of another application is refused unchanged.
  if (!create && db.pragma('user_version', { simple: true }) === 0) {
    throw Object.assign(new Error('the database has no schema'), { code: 'KMS_DB_EMPTY_SCHEMA' });
  }
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  // Freed pages are overwritten with zeros, so erased (wrapped) key material does not linger in the file.
  db.pragma('secure_delete = ON');
  db.pragma('busy_timeout = 5000');
  // The claim path reads index and table pages at random: keep them in memory (64 MiB cache, mmap'd reads).
  db.pragma('cache_size = -65536');
  db.pragma('mmap_size = 268435456');
  migrate(db);
}

export function migrate(db: Db): number {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(`database schema version ${current} is newer than this build (${MIGRATIONS.length})`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return MIGRATIONS.length;
}
