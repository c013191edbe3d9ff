// Checkpoints the store's write-ahead log once the broker has stopped writing for a moment, rather than in the middle
// of a busy commit: a checkpoint syncs the log and the database file on the event loop. SQLite's own automatic
// checkpoint stays as the bound on the log's length under writes that never pause.
import type { StoreDb } from './store-file.js';

/** WAL pages after which SQLite checkpoints inside a commit even if the broker never pauses (64 MiB at 4 KiB). */
export const WAL_AUTOCHECKPOINT_PAGES = 16384;
/** How long the store must have had no commit before its log is checkpointed. */
export const IDLE_CHECKPOINT_MS = 200;

export class IdleCheckpoint {
  private readonly timer: NodeJS.Timeout;
  /** Whether something was committed since the last checkpoint. */
  private dirty = false;

  /** `busy`: a transaction is open or the log is being synced; the checkpoint then waits for the next pause. */
  constructor(
    private readonly db: StoreDb,
    private readonly busy: () => boolean,
    ms = IDLE_CHECKPOINT_MS,
  ) {
    this.timer = setTimeout(() => this.run(), ms);
    this.timer.unref();
  }

  /** A commit was made: the checkpoint is due once `ms` pass without another. */
  committed(): void {
    this.dirty = true;
    this.timer.refresh();
  }

  close(): void {
    clearTimeout(this.timer);
  }

  private run(): void {
    if (!this.dirty) return;
    if (this.busy()) return void this.timer.refresh();
    this.dirty = false;
    // PASSIVE: copies what it can without waiting on anyone; with synchronous=NORMAL SQLite syncs the log before and
    // the database file after copying, so the log is only ever reused once what it held is on disk.
    try {
      this.db.pragma('wal_checkpoint(PASSIVE)');
    } catch {
      // Nothing is lost: the log keeps what it holds, and the next pause (or SQLite's own bound) checkpoints it.
      this.dirty = true;
    }
  }
}
