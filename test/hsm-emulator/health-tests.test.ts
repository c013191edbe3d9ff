// SP 800-90B health tests: cutoffs against the standard's table, each fault mode tripping the right test,
// and a healthy source running long without a false alarm.
import { randomFillSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { adaptiveProportionCutoff, HealthTests, repetitionCountCutoff } from '../../hsm-emulator/health-tests.js';
import { FaultyNoiseSource, OsNoiseSource, SeededNoiseSource } from '../../hsm-emulator/noise-source.js';

describe('cutoffs (alpha = 2^-20)', () => {
  it('repetition count: C = 1 + ceil(20 / H)', () => {
    expect([1, 2, 4, 6, 8].map(repetitionCountCutoff)).toEqual([21, 11, 6, 5, 4]);
  });

  it('adaptive proportion, W = 512: the values of SP 800-90B Table 2', () => {
    expect([0.5, 1, 2, 4, 8].map((h) => adaptiveProportionCutoff(h))).toEqual([410, 311, 177, 62, 13]);
  });

  it('rejects impossible entropy claims', () => {
    expect(() => repetitionCountCutoff(0)).toThrow(RangeError);
    expect(() => adaptiveProportionCutoff(9)).toThrow(RangeError);
  });
});

function firstFailure(source: { read(b: Uint8Array): void; minEntropy: number }, samples: number) {
  const t = new HealthTests(source.minEntropy);
  const buf = new Uint8Array(4096);
  for (let done = 0; done < samples; done += buf.length) {
    source.read(buf);
    const f = t.feed(buf);
    if (f) return { failure: f, at: done };
  }
  return undefined;
}

describe('fault modes trip the right test', () => {
  it('stuck-at trips the repetition count test within a few samples of getting stuck', () => {
    const r = firstFailure(
      new FaultyNoiseSource(new SeededNoiseSource('s'), { kind: 'stuck', after: 10_000 }),
      1 << 20,
    );
    expect(r?.failure).toBe('repetition-count');
    expect(r!.at).toBeLessThanOrEqual(10_000);
  });

  it('a biased source (one value 8% of the time) trips the adaptive proportion test', () => {
    const r = firstFailure(
      new FaultyNoiseSource(new SeededNoiseSource('b'), { kind: 'biased', probability: 0.08 }),
      1 << 20,
    );
    expect(r?.failure).toBe('adaptive-proportion');
  });

  it('intermittent bursts of identical samples trip the repetition count test', () => {
    const r = firstFailure(
      new FaultyNoiseSource(new SeededNoiseSource('i'), { kind: 'intermittent', period: 50_000, burst: 6 }),
      1 << 20,
    );
    expect(r?.failure).toBe('repetition-count');
  });

  it('a healthy source runs 32 Mi samples without a false alarm', () => {
    expect(firstFailure(new OsNoiseSource(), 32 << 20)).toBeUndefined();
  });

  it('runs of exactly C - 1 pass and C fail', () => {
    const t = new HealthTests(6); // C = 5
    const run = (n: number) => {
      const b = new Uint8Array(600);
      randomFillSync(b);
      for (let i = 0; i < b.length; i++) if (b[i] === 7) b[i] = 8;
      b.fill(7, 100, 100 + n);
      return t.feed(b);
    };
    expect(run(4)).toBeUndefined();
    expect(run(5)).toBe('repetition-count');
  });
});
