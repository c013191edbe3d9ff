// The abstract test suite aedes-persistence ships for every Aedes persistence, run against the SQLite store (each
// test on a new file). The suite is written for node:test; `suiteTest` gives it that test context on vitest.
import assert from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, test } from 'vitest';
import { SqlitePersistence } from '../../broker/persistence/sqlite.js';

const require = createRequire(import.meta.url);
type SuiteContext = { plan(n: number): void; assert: typeof assert; diagnostic(msg: string): void };
const abstractPersistence = require('aedes-persistence/abstract.js') as (o: {
  test: (name: string, fn: (t: SuiteContext) => Promise<void>) => void;
  persistence: () => Promise<unknown>;
  testAsync: boolean;
}) => void;

const dir = mkdtempSync(join(tmpdir(), 'qkey-store-abstract-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/** node:test's context as the suite uses it: t.assert counts its assertions, t.plan checks the count at the end. */
function suiteTest(name: string, fn: (t: SuiteContext) => Promise<void>): void {
  test(name, async () => {
    let planned: number | undefined;
    let made = 0;
    const counted = new Proxy(assert, {
      get(target, prop, receiver) {
        const value: unknown = Reflect.get(target, prop, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          made++;
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    await fn({ plan: (k) => (planned = k), assert: counted, diagnostic: () => undefined });
    if (planned !== undefined) assert.equal(made, planned, `planned ${planned} assertions, made ${made}`);
  });
}

abstractPersistence({
  test: suiteTest,
  persistence: async () => new SqlitePersistence({ file: join(dir, `store-${++n}.db`) }),
  testAsync: true,
});
