// The store's write-ahead log is checkpointed once commits pause, never while a transaction is open or the log is
// being synced, and on a real store the checkpoint moves what the log held into the database file.
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { IdleCheckpoint } from '../../broker/persistence/idle-checkpoint.js';
import { SqlitePersistence } from '../../broker/persistence/index.js';
import type { StoreDb } from '../../broker/persistence/store-file.js';
import { tempDir } from '../helpers/kms.js';

const dir = tempDir('qkey-idle-checkpoint-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MS = 30;
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

function recorder() {
  const calls: string[] = [];
  return { calls, db: { pragma: (p: string) => void calls.push(p) } as unknown as StoreDb };
}

it('checkpoints once after the last commit of a burst, and not at all without commits', async () => {
  const { calls, db } = recorder();
  const cp = new IdleCheckpoint(db, () => false, MS);
  await pause(MS * 3);
  expect(calls).toEqual([]);
  for (let i = 0; i < 5; i++) {
    cp.committed();
    await pause(MS / 3);
  }
  expect(calls).toEqual([]); // commits kept coming: no checkpoint in between
  await pause(MS * 3);
  expect(calls).toEqual(['wal_checkpoint(PASSIVE)']);
  await pause(MS * 3);
  expect(calls).toHaveLength(1);
  cp.close();
});

it('waits while a transaction is open or the log is being synced', async () => {
  const { calls, db } = recorder();
  let busy = true;
  const cp = new IdleCheckpoint(db, () => busy, MS);
  cp.committed();
  await pause(MS * 4);
  expect(calls).toEqual([]);
  busy = false;
  await pause(MS * 3);
  expect(calls).toEqual(['wal_checkpoint(PASSIVE)']);
  cp.close();
});

it('on a real store, the pause moves the queued message from the log into the database file', async () => {
  const file = join(dir, 'store.db');
  const store = new SqlitePersistence({ file });
  await store.setup({ id: 'b1', counter: 0 });
  const marker = `marker-${Date.now()}`;
  const payload = Buffer.from(marker);
  await store.outgoingEnqueueCombi([{ clientId: 'c1' }], {
    cmd: 'publish',
    topic: 't',
    payload,
    qos: 1,
    brokerId: 'b1',
    brokerCounter: 1,
  });
  // Committed and synced: in the log, not yet in the database file.
  expect(readFileSync(file).includes(payload)).toBe(false);
  await pause(1000);
  expect(readFileSync(file).includes(payload)).toBe(true);
  await store.destroy();
});
