// Group commit of audit records that must be durable before a response (logins): one transaction, one fsync a turn.
import type { KeyStore } from './store.js';

interface PendingRecord {
  actor: string;
  action: string;
  deviceId: string | null;
  detail: Record<string, unknown> | undefined;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * Audit records appended in one event-loop turn are written in one transaction (synchronous=FULL: one fsync for
 * all of them), and each caller's promise settles when that commit returns: a route that awaits it answers only
 * once its record is on disk, as with a record written on its own, at one fsync per turn instead of one per record.
 * A 2,000-device login storm (bench:scale --profile-all) spent 40% of the key service's thread in the fsync of each
 * login's own audit row.
 */
export class AuditQueue {
  private queue: PendingRecord[] = [];
  private scheduled = false;
  private readonly writeAll;

  constructor(
    store: KeyStore,
    /** Records per transaction at most; more wait for the next turn. */
    private readonly maxBatch = 1024,
  ) {
    this.writeAll = store.db.transaction((records: PendingRecord[]) => {
      for (const r of records) store.audit(r.actor, r.action, r.deviceId, r.detail);
    });
  }

  /** Resolves once the record is committed; rejects (and nothing of its turn is written) if the commit fails. */
  append(actor: string, action: string, deviceId: string | null, detail?: Record<string, unknown>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ actor, action, deviceId, detail, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Writes what is queued now. */
  flush(): void {
    this.scheduled = false;
    const batch = this.queue.splice(0, this.maxBatch);
    if (this.queue.length > 0) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    if (batch.length === 0) return;
    try {
      this.writeAll(batch);
    } catch (err) {
      for (const r of batch) r.reject(err);
      return;
    }
    for (const r of batch) r.resolve();
  }
}
