// Group commit for the broker's store: the writes of one turn of the event loop share one transaction, committed
// (and synced to disk) once, after which each of them resolves. A write is acknowledged only once it is durable.
import type { StoreDb } from './store-file.js';

export class GroupCommit {
  private waiting: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];
  private open = false;

  constructor(private readonly db: StoreDb) {}

  /**
   * Runs `write` now, inside the open transaction (begun if none is), and resolves with its result once that
   * transaction is committed. A write that throws is undone alone (a savepoint) and rejects at once.
   */
  run<T>(write: () => T): Promise<T> {
    if (!this.open) {
      this.db.exec('BEGIN IMMEDIATE');
      this.open = true;
      setImmediate(() => this.commit());
    }
    let result: T;
    this.db.exec('SAVEPOINT w');
    try {
      result = write();
      this.db.exec('RELEASE w');
    } catch (err) {
      this.db.exec('ROLLBACK TO w; RELEASE w');
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
      this.db.exec('COMMIT');
    } catch (err) {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      for (const w of waiting) w.reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    for (const w of waiting) w.resolve();
  }
}
