// Opens the broker's store file: SQLite in WAL mode, locked for this process alone, checked before use, migrated.
// A store another broker holds, a damaged file or one of a newer build is refused with a code, never reset.
import { chmodSync, closeSync, existsSync, openSync } from 'node:fs';
import Database from 'better-sqlite3';
import { WAL_AUTOCHECKPOINT_PAGES } from './idle-checkpoint.js';

export type StoreDb = Database.Database;

export type StoreErrorCode = 'BROKER_STORE_ERR_LOCKED' | 'BROKER_STORE_ERR_DAMAGED' | 'BROKER_STORE_ERR_VERSION';

/** The store could not be opened; the code says why, and the message names the file (nothing it holds). */
export class StoreError extends Error {
  override name = 'StoreError';
  constructor(
    readonly code: StoreErrorCode,
    detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

/** The schema, one migration per version (PRAGMA user_version). */
const MIGRATIONS = [
  `CREATE TABLE retained (topic TEXT PRIMARY KEY, meta TEXT NOT NULL, payload BLOB NOT NULL) STRICT;
   CREATE TABLE subscriptions (
     client TEXT NOT NULL, topic TEXT NOT NULL, options TEXT NOT NULL, PRIMARY KEY (client, topic)) STRICT;
   CREATE TABLE outgoing (
     seq INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL, broker_id TEXT, broker_counter INTEGER,
     message_id INTEGER, meta TEXT NOT NULL, payload BLOB) STRICT;
   CREATE INDEX outgoing_client ON outgoing (client, seq);
   CREATE TABLE incoming (
     client TEXT NOT NULL, message_id INTEGER NOT NULL, meta TEXT NOT NULL, payload BLOB,
     PRIMARY KEY (client, message_id)) STRICT;`,
  // outgoingUpdate finds a copy by (client, broker_counter), outgoingClearMessageId by (client, message_id): without
  // these each scanned the client's whole queue (measured: enqueue+update+clear 142 -> 38 us per message).
  `CREATE INDEX outgoing_counter ON outgoing (client, broker_counter);
   CREATE INDEX outgoing_message ON outgoing (client, message_id);`,
];

/**
 * Opens (creating it 0600 if absent) the store at `file`. The exclusive locking mode keeps the database lock from
 * the first transaction until close: a second broker on the same file is refused at once (BROKER_STORE_ERR_LOCKED),
 * and the operating system releases the lock when this process dies, kill -9 included.
 */
export function openStore(file: string): StoreDb {
  if (!existsSync(file)) {
    closeSync(openSync(file, 'wx', 0o600));
    chmodSync(file, 0o600);
  }
  let db: StoreDb;
  try {
    db = new Database(file, { fileMustExist: true, timeout: 0 });
  } catch (err) {
    throw classify(err, file);
  }
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    // Taking the write lock now: another process holding it answers SQLITE_BUSY.
    db.exec('BEGIN EXCLUSIVE; COMMIT');
    db.pragma('journal_mode = WAL');
    // SQLite does not wait for the disk at a commit; wal-sync.ts does, off the event loop, before any write of that
    // commit is acknowledged (the guarantee of synchronous=FULL). Checkpoints still sync the WAL and the file.
    db.pragma('synchronous = NORMAL');
    // Checkpoints run when the broker pauses (idle-checkpoint.ts); this bounds the log under writes that never do.
    db.pragma(`wal_autocheckpoint = ${WAL_AUTOCHECKPOINT_PAGES}`);
    // A command acknowledged and deleted leaves no plaintext behind in the file's free pages.
    db.pragma('secure_delete = ON');
    check(db, file);
    migrate(db, file);
    return db;
  } catch (err) {
    db.close();
    throw classify(err, file);
  }
}

/** A quick structural check of every page and index before the broker trusts what the file says. */
function check(db: StoreDb, file: string): void {
  const rows = db.pragma('quick_check') as Array<{ quick_check: string }>;
  if (rows.length !== 1 || rows[0]!.quick_check !== 'ok')
    throw new StoreError('BROKER_STORE_ERR_DAMAGED', `${file} failed its integrity check; restore it from a backup`);
}

function migrate(db: StoreDb, file: string): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length)
    throw new StoreError(
      'BROKER_STORE_ERR_VERSION',
      `${file} has schema version ${current}, newer than this build's (${MIGRATIONS.length})`,
    );
  if (current === 0) {
    // A file with tables but no version is another application's: refused unchanged.
    const tables = db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'").get() as { n: number };
    if (tables.n > 0) throw new StoreError('BROKER_STORE_ERR_DAMAGED', `${file} is not a broker store`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

/** An SQLite failure while opening or reading `file`, as the store error it means (others unchanged). */
export function classify(err: unknown, file: string): Error {
  if (err instanceof StoreError) return err;
  const code = (err as { code?: string }).code ?? '';
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'))
    return new StoreError('BROKER_STORE_ERR_LOCKED', `${file} is in use by another broker process`);
  if (code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_NOTADB'))
    return new StoreError('BROKER_STORE_ERR_DAMAGED', `${file} is damaged (${code}); restore it from a backup`);
  return err instanceof Error ? err : new Error(String(err));
}
