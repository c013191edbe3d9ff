// An application client's answer to rotation notices (common/rotation-notices.ts): a notice for the current
// generation rotates once it is asked; others are ignored; a failed handshake is retried with backoff until it works,
// the generation moves on, or the connection ends.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { followRotationNotices } from '../../common/rotation-notices.js';
import { rotationNotice } from '../../protocol/index.js';

afterEach(() => vi.useRealTimers());

function session(failures = 0) {
  const s = { generation: 0, alive: true, calls: 0, failed: 0, failuresLeft: failures };
  const onNotice = followRotationNotices({
    current: () => s.generation,
    alive: () => s.alive,
    rotate: async () => {
      s.calls++;
      if (s.failuresLeft-- > 0) throw new Error('key service unreachable');
      s.generation++;
    },
    failed: () => s.failed++,
  });
  return { s, onNotice };
}

describe('followRotationNotices', () => {
  it('rotates on a notice for the current generation, and ignores one for another or a non-notice', async () => {
    const { s, onNotice } = session();
    onNotice(rotationNotice(3));
    onNotice(new TextEncoder().encode('{"key_ID":"x","key_index":0}'));
    await Promise.resolve();
    expect(s.calls).toBe(0);
    onNotice(rotationNotice(0));
    await vi.waitFor(() => expect(s.generation).toBe(1));
    onNotice(rotationNotice(0)); // a late duplicate: the client has moved on
    await Promise.resolve();
    expect(s.calls).toBe(1);
  });

  it('retries a failed handshake after 1 s, 2 s, 4 s ... until it succeeds', async () => {
    vi.useFakeTimers();
    const { s, onNotice } = session(3);
    onNotice(rotationNotice(0));
    await vi.advanceTimersByTimeAsync(0);
    expect([s.calls, s.failed]).toEqual([1, 1]);
    await vi.advanceTimersByTimeAsync(999);
    expect(s.calls).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(s.calls).toBe(2);
    await vi.advanceTimersByTimeAsync(2000);
    expect(s.calls).toBe(3);
    await vi.advanceTimersByTimeAsync(4000);
    expect([s.calls, s.failed, s.generation]).toEqual([4, 3, 1]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(s.calls).toBe(4);
  });

  it('stops retrying when the connection ends', async () => {
    vi.useFakeTimers();
    const { s, onNotice } = session(100);
    onNotice(rotationNotice(0));
    await vi.advanceTimersByTimeAsync(0);
    s.alive = false;
    await vi.advanceTimersByTimeAsync(120_000);
    expect(s.calls).toBe(1);
  });
});

describe('a notice that overtakes the announcement it answers', () => {
  it('a notice for the generation being announced rotates once more after that announcement', async () => {
    // The client is announcing generation 1 (its PUBACK not back yet) when the broker's notice for 1 arrives.
    let announced = 1;
    let release: () => void = () => undefined;
    let inFlight: Promise<void> | undefined = new Promise<void>((r) => (release = r));
    let calls = 0;
    const onNotice = followRotationNotices({
      current: () => announced,
      alive: () => true,
      rotate: () => {
        calls++;
        inFlight ??= Promise.resolve().then(() => void announced++);
        const p = inFlight;
        void p.then(() => (inFlight = undefined));
        return p;
      },
      failed: () => undefined,
    });
    onNotice(rotationNotice(1));
    await Promise.resolve();
    expect(calls).toBe(1); // joined the handshake under way
    release();
    await vi.waitFor(() => expect(announced).toBe(2));
    expect(calls).toBe(2);
  });
});

it('a rotate that moves nothing on is tried twice at most per notice', async () => {
  let calls = 0;
  const onNotice = followRotationNotices({
    current: () => 0,
    alive: () => true,
    rotate: async () => void calls++,
    failed: () => undefined,
  });
  onNotice(rotationNotice(0));
  await new Promise((r) => setTimeout(r, 20));
  expect(calls).toBe(2);
});
