// Login limits on a controlled clock: backoff per (subject, source) and per source, a per-subject bound that slows
// suspects and never blocks clean sources, racing attempts, the challenge rate, and the challenge book's quotas.
import { describe, expect, it } from 'vitest';
import { ChallengeBook } from '../../key-service/login.js';
import { type Attempt, LoginLimiter, type LoginLimitSettings, sourceKey } from '../../key-service/login-limits.js';

const SETTINGS: LoginLimitSettings = {
  perSource: 50,
  perSubjectSource: 5,
  perSubject: 200,
  maxBackoffSeconds: 60,
  forgetSeconds: 600,
  challengeRate: 2,
  challengeBurst: 4,
};

function limiter(settings: Partial<LoginLimitSettings> = {}) {
  let t = 1_000_000;
  const l = new LoginLimiter({ ...SETTINGS, ...settings }, () => t);
  return {
    l,
    advance: (ms: number) => (t += ms),
    /** One attempt that fails, or the refusal's scope and wait. */
    fail(subject: string, source: string) {
      const a = l.attempt(subject, source);
      if (!a.ok) return `${a.scope} ${a.retryAfterSeconds}`;
      a.failed();
      return 'failed';
    },
    succeed(subject: string, source: string) {
      const a = l.attempt(subject, source);
      if (!a.ok) return `${a.scope} ${a.retryAfterSeconds}`;
      a.succeeded();
      return 'ok';
    },
  };
}

describe('sourceKey', () => {
  it('keys IPv4 as is, IPv4-mapped IPv6 as IPv4, and IPv6 by its /64', () => {
    expect(sourceKey('192.0.2.7')).toBe('192.0.2.7');
    expect(sourceKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(sourceKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(sourceKey('2001:0db8:0000:0000:ffff:1:2:3')).toBe('2001:db8:0:0::/64');
    expect(sourceKey('2001:db8::ffff:1.2.3.4')).toBe('2001:db8:0:0::/64');
    expect(sourceKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(sourceKey('2001:db8:0:1::1')).not.toBe(sourceKey('2001:db8::1'));
    expect(sourceKey('::1')).toBe('0:0:0:0::/64');
  });
});

describe('LoginLimiter', () => {
  it('backs a (subject, source) pair off exponentially past its allowance; another source is untouched', () => {
    const { fail, succeed, advance } = limiter();
    for (let i = 0; i < 5; i++) expect(fail('dev-1', '203.0.113.9')).toBe('failed'); // the fifth starts the backoff
    expect(fail('dev-1', '203.0.113.9')).toBe('subject-source 1');
    expect(succeed('dev-1', '198.51.100.1')).toBe('ok');
    advance(1000);
    expect(fail('dev-1', '203.0.113.9')).toBe('failed');
    expect(fail('dev-1', '203.0.113.9')).toBe('subject-source 2');
    advance(2000);
    expect(fail('dev-1', '203.0.113.9')).toBe('failed');
    expect(fail('dev-1', '203.0.113.9')).toBe('subject-source 4');
    for (let i = 0; i < 20; i++) {
      advance(60_000);
      fail('dev-1', '203.0.113.9');
    }
    expect(fail('dev-1', '203.0.113.9')).toBe('subject-source 60'); // capped at maxBackoffSeconds
    expect(succeed('dev-1', '198.51.100.1')).toBe('ok');
  });

  it('a success clears its own pair only, so owning one account does not reset a source', () => {
    const { fail, succeed, advance } = limiter({ perSource: 8 });
    for (let i = 0; i < 5; i++) fail('victim', '203.0.113.9');
    expect(succeed('own', '203.0.113.9')).toBe('ok');
    for (let i = 0; i < 3; i++) expect(fail(`victim-${i}`, '203.0.113.9')).toBe('failed');
    expect(fail('victim-9', '203.0.113.9')).toBe('source 1');
    advance(1000);
    expect(succeed('own', '203.0.113.9')).toBe('ok');
    expect(fail('victim-9', '203.0.113.9')).toBe('failed');
    expect(fail('victim-10', '203.0.113.9')).toBe('source 2');
  });

  it('a subject attacked from many sources slows its suspect sources to one attempt a second, never blocks a clean one', () => {
    const { fail, succeed, advance } = limiter();
    let n = 0;
    // 1,000 sources fail once each, then keep trying: a botnet spread thin.
    for (let i = 0; i < 1000; i++) expect(fail('dev-x', `10.0.${i >> 8}.${i & 255}`)).toBe('failed');
    expect(fail('dev-x', '10.0.0.1')).toBe('failed'); // the first suspect attempt of this second
    for (let i = 2; i < 1000; i++) if (fail('dev-x', `10.0.${i >> 8}.${i & 255}`) === 'subject 1') n++;
    expect(n).toBe(998);
    expect(succeed('dev-x', '198.51.100.1')).toBe('ok'); // a clean source
    expect(fail('dev-x', '192.0.2.200')).toBe('failed'); // also clean: its first try is never slowed
    advance(1000);
    expect(fail('dev-x', '10.0.0.2')).toBe('failed');
    expect(succeed('dev-x', '198.51.100.1')).toBe('ok');
  });

  it('parallel attempts count before they finish: a burst gets no more tries than a sequence would', () => {
    const { l, advance } = limiter();
    const admitted: Attempt[] = [];
    let refused = 0;
    for (let i = 0; i < 100; i++) {
      const a = l.attempt('app-1', '203.0.113.9');
      if (a.ok) admitted.push(a);
      else refused++;
    }
    expect(admitted.length).toBe(5);
    expect(refused).toBe(95);
    for (const a of admitted) a.failed();
    expect(l.attempt('app-1', '203.0.113.9').ok).toBe(false);
    advance(1000);
    expect(l.attempt('app-1', '203.0.113.9').ok).toBe(true); // the sixth, alone, after the backoff
    // Settling twice changes nothing.
    admitted[0]!.failed();
    admitted[0]!.succeeded();
  });

  it('an abandoned attempt (the check itself threw) neither counts nor keeps its slot', () => {
    const { l, fail } = limiter();
    for (let i = 0; i < 10; i++) {
      const a = l.attempt('dev-2', '203.0.113.9');
      expect(a.ok).toBe(true);
      if (a.ok) a.abandoned();
    }
    for (let i = 0; i < 5; i++) expect(fail('dev-2', '203.0.113.9')).toBe('failed');
  });

  it('refused attempts store nothing: a blocked source spraying made-up ids costs no memory', () => {
    const { l, fail } = limiter();
    for (let i = 0; i < 50; i++) fail(`ghost-${i}`, '203.0.113.9');
    const before = l.tracked;
    for (let i = 0; i < 10_000; i++) expect(fail(`spray-${i}`, '203.0.113.9')).toBe('source 1');
    expect(l.tracked).toEqual(before);
  });

  it('forgets idle failure counters', () => {
    const { fail, advance } = limiter();
    for (let i = 0; i < 6; i++) fail('dev-3', '203.0.113.9');
    expect(fail('dev-3', '203.0.113.9')).toMatch(/^subject-source/);
    advance(600_000);
    for (let i = 0; i < 5; i++) expect(fail('dev-3', '203.0.113.9')).toBe('failed');
  });

  it('rates challenges per source: a burst, then challengeRate a second', () => {
    const { l, advance } = limiter();
    for (let i = 0; i < 4; i++) expect(l.challenge('203.0.113.9')).toBeUndefined();
    expect(l.challenge('203.0.113.9')).toEqual({ ok: false, scope: 'challenge-rate', retryAfterSeconds: 1 });
    expect(l.challenge('203.0.113.10')).toBeUndefined();
    expect(l.challenge('2001:db8::1')).toBeUndefined();
    for (let i = 0; i < 3; i++) l.challenge(`2001:db8::${i + 2}`); // the same /64
    expect(l.challenge('2001:db8::99')?.ok).toBe(false);
    advance(500);
    expect(l.challenge('203.0.113.9')).toBeUndefined();
    expect(l.challenge('203.0.113.9')?.ok).toBe(false);
  });

  it('check() refuses a challenge early for a pair or source in backoff', () => {
    const { l, fail } = limiter();
    for (let i = 0; i < 6; i++) fail('dev-4', '203.0.113.9');
    expect(l.check('dev-4', '203.0.113.9')).toMatchObject({ scope: 'subject-source' });
    expect(l.check('dev-4', '198.51.100.1')).toBeUndefined();
    expect(l.check('dev-5', '203.0.113.9')).toBeUndefined();
  });
});

describe('ChallengeBook', () => {
  function book(perSource: number, maxOpen: number) {
    let t = 0;
    return { b: new ChallengeBook(60_000, perSource, maxOpen, () => t), advance: (ms: number) => (t += ms) };
  }

  it("a source past its share evicts its own oldest challenge, never another source's", () => {
    const { b } = book(10, 1000);
    const victim = b.issue('dev-v', '198.51.100.1')!;
    const first = b.issue('dev-a', '203.0.113.9')!;
    for (let i = 0; i < 5000; i++) b.issue(`dev-${i}`, '203.0.113.9');
    expect(b.size).toBe(11);
    expect(b.take('dev-a', first.challenge.toString('base64'))).toBe(false);
    expect(b.take('dev-v', victim.challenge.toString('base64'))).toBe(true);
  });

  it('a full book refuses new challenges instead of evicting open ones; expiry frees room', () => {
    const { b, advance } = book(10, 30);
    const held = [];
    for (let s = 0; s < 3; s++) for (let i = 0; i < 10; i++) held.push(b.issue('dev-h', `192.0.2.${s}`)!);
    expect(b.issue('dev-late', '192.0.2.99')).toBeUndefined();
    expect(b.take('dev-h', held[0]!.challenge.toString('base64'))).toBe(true);
    expect(b.issue('dev-late', '192.0.2.99')).toBeDefined();
    advance(60_000);
    expect(b.take('dev-h', held[1]!.challenge.toString('base64'))).toBe(false);
    expect(b.issue('dev-late', '192.0.2.98')).toBeDefined();
    expect(b.size).toBe(1);
  });

  it('a challenge is single use and bound to its device', () => {
    const { b } = book(10, 100);
    const c = b.issue('dev-1', '192.0.2.1')!.challenge.toString('base64');
    expect(b.take('dev-2', c)).toBe(false);
    expect(b.take('dev-1', c)).toBe(false);
    const d = b.issue('dev-1', '192.0.2.1')!.challenge.toString('base64');
    expect(b.take('dev-1', d)).toBe(true);
    expect(b.take('dev-1', d)).toBe(false);
  });
});
