// Group commit for the broker's store: the writes of one turn of the event loop share one transaction, committed
// once and synced to disk (wal-sync.ts), after which each of them resolves. A write is acknowledged only once it
// is durable.
import type { StoreDb } from './store-file.js';
import type { WalSync } from './wal-sync.js';

export class GroupCommit {
  private waiting: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];
  private open = false;
  private readonly tx;

  constructor(
    private readonly db: StoreDb,
    private readonly wal: WalSync,
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
   * transaction is committed. A write that throws is undone alone (a savepoint) and rejects at once.
   */
  run<T>(write: () => T): Promise<T> {
    if (!this.open) {
      this.tx.begin();
      this.open = true;
      setImmediate(() => this.commit());
    }
    let result: T;
    this.tx.savepoint();
    try {
      result = write();
      this.tx.release();
    } catch (err) {
      this.tx.undo();
      this.tx.release();
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    return new Promise<T>((resolve, reject) => this.waiting.push({ resolve: () => resolve(result), reject }));
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
    this.wal.sync().then(
      () => waiting.forEach((w) => w.resolve()),
      (err: Error) => waiting.forEach((w) => w.reject(err)),
    );
  }
}
