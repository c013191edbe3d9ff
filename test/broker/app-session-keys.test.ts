// An application connection's session keys at the broker: generations only move forward, two are held, a key past
// its rotation limits seals and opens nothing, and replays are refused.
import { describe, expect, it } from 'vitest';
import { AppSessionError, AppSessionKeys } from '../../broker/app-session-keys.js';
import { openEnvelope, sealEnvelope } from '../../protocol/index.js';

const k = (b: number) => new Uint8Array(16).fill(b);
const topic = 'devices/d/down/cmd';
const up = (key: Uint8Array, keyIndex: number, seq: number) =>
  sealEnvelope(new Uint8Array([1, 2, 3]), { key, keyIndex, seq, deviceId: 'app', topic, direction: 'app-up' });
const reason = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    return err instanceof AppSessionError ? err.reason : (err as { code?: string }).code;
  }
  return 'none';
};

describe('AppSessionKeys', () => {
  const limits = { messages: 3, bytes: 1000, seconds: 3600 };

  it('opens app-up under the announced generation, refuses replays, seals app-down the app opens', () => {
    const s = new AppSessionKeys('app', limits);
    expect(s.active).toBe(false);
    expect(s.seal(new Uint8Array([1]), topic)).toBeUndefined();
    s.install(0, k(1));
    expect([...s.open(up(k(1), 0, 0), topic)]).toEqual([1, 2, 3]);
    expect(reason(() => s.open(up(k(1), 0, 0), topic))).toBe('PROTO_ERR_REPLAY');
    expect(reason(() => s.open(up(k(2), 0, 1), topic))).toBe('PROTO_ERR_TAG');
    expect(reason(() => s.open(up(k(1), 7, 1), topic))).toBe('foreign_key');
    const down = s.seal(new Uint8Array([9]), topic)!;
    const opened = openEnvelope(down, { key: k(1), deviceId: 'app', topic, direction: 'app-down' });
    expect([...opened.payload]).toEqual([9]);
  });

  it('refuses a generation not above the newest; keeps the previous one, destroys older', () => {
    const s = new AppSessionKeys('app', limits);
    s.install(0, k(1));
    s.install(1, k(2));
    expect(reason(() => s.install(1, k(3)))).toBe('malformed');
    expect(reason(() => s.install(0, k(3)))).toBe('malformed');
    expect(s.open(up(k(1), 0, 0), topic)).toHaveLength(3); // the previous key still opens
    s.install(2, k(3));
    expect(reason(() => s.open(up(k(1), 0, 1), topic))).toBe('foreign_key'); // two back: gone
    expect(s.open(up(k(2), 1, 0), topic)).toHaveLength(3);
  });

  it('a key past its message limit seals and opens nothing more', () => {
    const s = new AppSessionKeys('app', limits);
    s.install(0, k(1));
    s.open(up(k(1), 0, 0), topic);
    s.open(up(k(1), 0, 1), topic);
    expect(s.seal(new Uint8Array([1]), topic)).toBeDefined();
    expect(s.seal(new Uint8Array([1]), topic)).toBeUndefined();
    expect(reason(() => s.open(up(k(1), 0, 2), topic))).toBe('key_spent');
    s.install(1, k(2));
    expect(s.seal(new Uint8Array([1]), topic)).toBeDefined();
  });

  it('a key past its age limit is spent', () => {
    let now = 0;
    const s = new AppSessionKeys('app', { ...limits, seconds: 10 }, () => now);
    s.install(0, k(1));
    now = 10_000;
    expect(s.seal(new Uint8Array([1]), topic)).toBeUndefined();
  });

  it('asks for a rotation once per generation, at half of any limit, and when none is left', () => {
    let now = 0;
    const s = new AppSessionKeys('app', { messages: 4, bytes: 100, seconds: 10 }, () => now);
    expect(s.rotationDue()).toBeUndefined(); // no key yet
    expect(s.canSeal()).toBe(false);
    s.install(0, k(1));
    expect(s.canSeal()).toBe(true);
    s.seal(new Uint8Array([1]), topic);
    expect(s.rotationDue()).toBeUndefined();
    s.open(up(k(1), 0, 0), topic); // both directions count: 2 of 4
    expect(s.rotationDue()).toBe(0);
    expect(s.rotationDue()).toBe(0); // still due until the notice is written
    s.told(0);
    expect(s.rotationDue()).toBeUndefined(); // told once
    s.install(1, k(2));
    s.seal(new Uint8Array(50), topic); // half the bytes
    expect(s.rotationDue()).toBe(1);
    s.told(1);
    s.install(2, k(3));
    now = 4_999;
    expect(s.rotationDue()).toBeUndefined();
    now = 5_000; // half the age
    expect(s.rotationDue()).toBe(2);
    s.told(2);
    s.install(3, k(4));
    now = 5_000 + 10_000; // spent by age before anything told: none left
    expect(s.canSeal()).toBe(false);
    expect(s.rotationDue()).toBe(3);
  });

  it('counts the bytes of the delivery to be sealed: one that would cross the byte limit waits for the next key', () => {
    const s = new AppSessionKeys('app', { messages: 4, bytes: 100, seconds: 10 }, () => 0);
    s.install(0, k(1));
    expect(s.canSeal(150)).toBe(true); // a key that carried nothing takes even one larger than the limit
    expect(s.seal(new Uint8Array(60), topic)).toBeDefined();
    expect(s.canSeal(40)).toBe(true);
    expect(s.canSeal(41)).toBe(false);
    expect(s.rotationDue(0)).toBe(0); // 60 of 100 bytes: past half anyway
    expect(s.seal(new Uint8Array(41), topic)).toBeUndefined();
    expect(s.seal(new Uint8Array(40), topic)).toBeDefined(); // exactly the limit
    expect(s.canSeal(1)).toBe(false);
  });

  it('tells when the next delivery would not fit, before half of any limit is used', () => {
    const s = new AppSessionKeys('app', { messages: 100, bytes: 100, seconds: 10 }, () => 0);
    s.install(0, k(1));
    s.seal(new Uint8Array(30), topic);
    expect(s.rotationDue(0)).toBeUndefined();
    expect(s.rotationDue(70)).toBeUndefined();
    expect(s.rotationDue(71)).toBe(0);
  });
});
