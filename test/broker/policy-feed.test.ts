// The broker's follower of the policy table: fetched at start (no start without it), replaced only when the
// version moves, kept when the key service goes away, one poll at a time.
import { expect, it } from 'vitest';
import type { PolicyFeedJson } from '../../kms-api/policy-schemas.js';
import { PolicyFeed } from '../../broker/policy/feed.js';

const entry = (policy_id: string, version: number) => ({
  policy_id,
  role: 'device' as const,
  filter: '#',
  encryption: 'required',
  version,
  updated_at: 0,
});

/** A key service that answers from `pages` in turn (an Error is thrown), recording the `known` it was asked. */
function fakeKms(pages: Array<PolicyFeedJson | Error>) {
  const asked: number[] = [];
  return {
    asked,
    policyFeed: async (known: number) => {
      asked.push(known);
      const next = pages.shift();
      if (!next) throw new Error('no more pages');
      if (next instanceof Error) throw next;
      return next;
    },
  };
}

it('a broker that cannot fetch the table does not start', async () => {
  const feed = new PolicyFeed(fakeKms([new Error('connection refused')]), 60_000);
  await expect(feed.start()).rejects.toThrow('connection refused');
  feed.stop();
});

it('asks with the version it knows, compiles a new table only when the version moves, keeps it when unreachable', async () => {
  const kms = fakeKms([
    { version: 3, entries: [entry('a', 3)] },
    { version: 3 },
    new Error('down'),
    { version: 4, entries: [entry('a', 3), entry('b', 4)] },
  ]);
  const feed = new PolicyFeed(kms, 60_000);
  const seen: number[] = [];
  feed.onChange((p) => seen.push(p.version));
  await feed.start();
  feed.stop();
  expect(feed.current).toMatchObject({ version: 3, size: 1 });
  const first = feed.current;
  await feed.poll();
  expect(feed.current).toBe(first);
  await feed.poll();
  expect(feed.healthy).toBe(false);
  expect(feed.current).toBe(first);
  await feed.poll();
  expect(feed.healthy).toBe(true);
  expect(feed.current).toMatchObject({ version: 4, size: 2 });
  expect(kms.asked).toEqual([0, 3, 3, 3]);
  expect(seen).toEqual([3, 4]);
});

it('overlapping polls share one request', async () => {
  const kms = fakeKms([
    { version: 1, entries: [] },
    { version: 2, entries: [entry('x', 2)] },
  ]);
  const feed = new PolicyFeed(kms, 60_000);
  await feed.start();
  feed.stop();
  await Promise.all([feed.poll(), feed.poll(), feed.poll()]);
  expect(kms.asked).toEqual([0, 1]);
  expect(feed.current.version).toBe(2);
});

it('a listener that throws does not stop the feed', async () => {
  const feed = new PolicyFeed(fakeKms([{ version: 1, entries: [entry('a', 1)] }]), 60_000);
  feed.onChange(() => {
    throw new Error('listener bug');
  });
  await feed.start();
  feed.stop();
  expect(feed.current.version).toBe(1);
});
