// Login audit records: group-committed per event-loop turn, each login answered only once its record is committed.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AuditQueue } from '../../key-service/audit-queue.js';
import { KmsHttpError } from '../../kms-api/client.js';
import { loginProof } from '../../protocol/index.js';
import { provisionDevice, type ProvisionedDevice, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

let t: TestKms;
const devs: ProvisionedDevice[] = [];

beforeAll(async () => {
  t = await startTestKms({ loginLimits: { perSource: 10_000 } });
  for (let i = 0; i < 20; i++) devs.push(await provisionDevice(t.admin, `dev-audit-${i}`, 1, 1));
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

const loginRows = (deviceId: string) =>
  t.kms.context.store.db
    .prepare(`SELECT COUNT(*) FROM audit WHERE action = 'login' AND device_id = ?`)
    .pluck()
    .get(deviceId) as number;

async function login(dev: ProvisionedDevice) {
  const { challenge } = await t.anon.challenge(dev.deviceId);
  const mac = Buffer.from(loginProof(dev.loginKey, dev.deviceId, Buffer.from(challenge, 'base64'))).toString('base64');
  return t.anon.deviceToken(dev.deviceId, challenge, mac);
}

describe('login audit records', () => {
  it('twenty logins at once: each is answered only once its record is committed', async () => {
    const store = t.kms.context.store;
    const audit = vi.spyOn(store, 'audit');
    try {
      const before = devs.map((d) => loginRows(d.deviceId));
      await Promise.all(
        devs.map(async (d, i) => {
          await login(d);
          // The response came after the record was written and committed.
          expect(loginRows(d.deviceId)).toBe(before[i]! + 1);
        }),
      );
      expect(audit.mock.calls.filter((c) => c[1] === 'login')).toHaveLength(devs.length);
    } finally {
      audit.mockRestore();
    }
  });

  it('a commit that fails answers no token: the records of that turn are all rejected, none is written', async () => {
    const store = t.kms.context.store;
    const original = t.kms.context.audits;
    const queue = new AuditQueue(store);
    t.kms.context.audits = queue;
    const real = store.audit.bind(store);
    let calls = 0;
    // The second record of the turn fails to insert: the first, written in the same transaction, is rolled back.
    const spy = vi.spyOn(store, 'audit').mockImplementation((...args) => {
      if (++calls === 2) throw new Error('disk full');
      real(...args);
    });
    try {
      const [a, b] = [devs[0]!, devs[1]!];
      const before = [loginRows(a.deviceId), loginRows(b.deviceId)];
      const results = await Promise.allSettled([login(a), login(b)]);
      // Both token requests were in one turn only if they reached the queue together; either way no token leaves
      // without its record.
      for (const [i, r] of results.entries()) {
        const d = [a, b][i]!;
        if (r.status === 'fulfilled') expect(loginRows(d.deviceId)).toBe(before[i]! + 1);
        else {
          expect(r.reason).toBeInstanceOf(KmsHttpError);
          expect((r.reason as KmsHttpError).status).toBe(500);
          expect(loginRows(d.deviceId)).toBe(before[i]);
        }
      }
      expect(results.some((r) => r.status === 'rejected')).toBe(true);
    } finally {
      spy.mockRestore();
      t.kms.context.audits = original;
    }
  });

  it('a turn whose commit fails rejects every record of it and writes none', async () => {
    const store = t.kms.context.store;
    const queue = new AuditQueue(store);
    const real = store.audit.bind(store);
    let calls = 0;
    const spy = vi.spyOn(store, 'audit').mockImplementation((...args) => {
      if (++calls === 2) throw new Error('disk full');
      real(...args);
    });
    const rows = () => store.db.prepare(`SELECT COUNT(*) FROM audit WHERE action = 'test.fail'`).pluck().get();
    try {
      const results = await Promise.allSettled([0, 1, 2].map((i) => queue.append('test', 'test.fail', null, { i })));
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected']);
      expect(rows()).toBe(0);
      // The queue carries on: the next turn commits.
      await queue.append('test', 'test.fail', null);
      expect(rows()).toBe(1);
    } finally {
      spy.mockRestore();
    }
  });

  it('the records of a turn share one transaction, at most maxBatch of them; the rest follow in the next turns', async () => {
    const store = t.kms.context.store;
    let transactions = 0;
    const transaction = store.db.transaction.bind(store.db);
    const built = vi.spyOn(store.db, 'transaction').mockImplementation((fn) => {
      const tx = transaction(fn);
      return Object.assign((...args: unknown[]) => {
        transactions++;
        return tx(...args);
      }, tx);
    });
    const queue = new AuditQueue(store, 3);
    built.mockRestore();
    let flushes = 0;
    const flush = queue.flush.bind(queue);
    vi.spyOn(queue, 'flush').mockImplementation(() => {
      flushes++;
      flush();
    });
    const byFlush: number[] = [];
    const real = store.audit.bind(store);
    const spy = vi.spyOn(store, 'audit').mockImplementation((...args) => {
      byFlush.push(flushes);
      real(...args);
    });
    try {
      await Promise.all(Array.from({ length: 7 }, (_, i) => queue.append('test', 'test.batch', null, { i })));
      expect(byFlush).toEqual([1, 1, 1, 2, 2, 2, 3]);
      expect(transactions).toBe(3);
    } finally {
      spy.mockRestore();
    }
  });
});
