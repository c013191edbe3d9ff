// The persistence the broker runs on, as configured: Aedes' in-memory one, or the SQLite store in the data folder.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { SqlitePersistence } from './sqlite.js';

export { StoreError, type StoreErrorCode } from './store-file.js';
export { SqlitePersistence } from './sqlite.js';

export type PersistenceKind = 'memory' | 'sqlite';

export interface BrokerPersistence {
  /** What to give Aedes as `persistence` (undefined: Aedes' in-memory one). */
  aedes: SqlitePersistence | undefined;
  /** The store file, when there is one. */
  file: string | undefined;
  /** Closes the store, after Aedes is closed. */
  close(): Promise<void>;
}

/** The store file of the broker `brokerId` in `dataDir`. */
export function storeFile(dataDir: string, brokerId: string): string {
  return join(dataDir, `broker-${brokerId}.db`);
}

export function openPersistence(kind: PersistenceKind, dataDir: string, brokerId: string): BrokerPersistence {
  if (kind === 'memory') return { aedes: undefined, file: undefined, close: async () => undefined };
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = storeFile(dataDir, brokerId);
  const store = new SqlitePersistence({ file });
  let closed = false;
  return {
    aedes: store,
    file,
    close: async () => {
      if (closed) return;
      closed = true;
      await store.destroy();
    },
  };
}
