// Makes committed transactions durable off the event loop: the store commits with synchronous=NORMAL (SQLite
// writes the WAL but does not wait for the disk), then this syncs the WAL file on libuv's thread pool, and only
// then are the writes of that commit acknowledged. The same guarantee as synchronous=FULL (the WAL is on disk
// before a write is acknowledged) without the event loop stalling for each fsync; syncs are grouped: commits made
// while one sync runs share the next.
import { closeSync, existsSync, fsync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';

export class WalSync {
  private fd: number | undefined;
  private running = false;
  /** Resolvers waiting for a sync that starts after their commit. */
  private next: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];

  constructor(private readonly walFile: string) {}

  /** Resolves once everything committed before this call is on disk. */
  sync(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.next.push({ resolve, reject });
      if (!this.running) this.start();
    });
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private start(): void {
    const waiting = this.next;
    this.next = [];
    this.running = true;
    // The WAL exists from the first commit on, and stays while the store is open (exclusive locking mode); the
    // first time, the folder is synced too, so that the WAL's name in it is on disk.
    if (this.fd === undefined) {
      if (!existsSync(this.walFile)) return this.done(waiting, null);
      this.fd = openSync(this.walFile, 'r');
      const dir = openSync(dirname(this.walFile), 'r');
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    }
    fsync(this.fd, (err) => this.done(waiting, err));
  }

  private done(waiting: Array<{ resolve: () => void; reject: (err: Error) => void }>, err: Error | null): void {
    this.running = false;
    for (const w of waiting)
      if (err) w.reject(err);
      else w.resolve();
    if (this.next.length > 0) this.start();
  }
}
