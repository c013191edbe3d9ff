// Group commit for the broker's store: writes share one transaction, committed once and synced to disk
// (wal-sync.ts), after which each of them resolves; a write is acknowledged only once it is durable. The
// transaction is committed at the end of the current turn of the event loop, or, while a sync runs, when it ends:
// under load one commit (and one sync) carries everything written during the previous sync.
import type { StoreDb } from './store-file.js';
import type { WalSync } from './wal-sync.js';

export class GroupCommit {
  private waiting: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];
  private open = false;
  private readonly tx;

  constructor(
    private readonly db: StoreDb,
    private readonly wal: WalSync,
    /** Called after each successful commit (idle-checkpoint.ts). */
    private readonly committed: () => void = () => undefined,
  ) {
    const run = (sql: string) => {
      const stmt = db.prepare(sql);
      return () => void stmt.run();
    };
    this.tx = {
      begin: run('BEGIN IMMEDIATE'),
      commit: run('COMMIT'),
      savepoint: run('SAVEPOINT w'),
      release: run('RELEASE w'),
      undo: run('ROLLBACK TO w'),
    };
  }

  /**
   * Runs `write` now, inside the open transaction (begun if none is), and resolves with its result once that
   * transaction is committed. A write that throws rejects at once and leaves nothing behind: a single statement is
   * undone by SQLite itself; a write of several statements passes `several` and runs in a savepoint.
   */
  run<T>(write: () => T, several = false): Promise<T> {
    if (!this.open) {
      this.tx.begin();
      this.open = true;
      if (this.wal.busy) this.wal.whenIdle(() => this.commit());
      else setImmediate(() => this.commit());
    }
    let result: T;
    if (several) this.tx.savepoint();
    try {
      result = write();
      if (several) this.tx.release();
    } catch (err) {
      if (several) {
        this.tx.undo();
        this.tx.release();
      }
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    return new Promise<T>((resolve, reject) => this.waiting.push({ resolve: () => resolve(result), reject }));
  }

  /** Whether a transaction is open (writes not yet committed). */
  get pending(): boolean {
    return this.open;
  }

  /** Commits what is open now (also on close); every write in it resolves, or rejects if the commit fails. */
  commit(): void {
    if (!this.open) return;
    const waiting = this.waiting;
    this.waiting = [];
    this.open = false;
    try {
      this.tx.commit();
    } catch (err) {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      for (const w of waiting) w.reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.committed();
    this.wal.sync().then(
      () => waiting.forEach((w) => w.resolve()),
      (err: Error) => waiting.forEach((w) => w.reject(err)),
    );
  }
}
