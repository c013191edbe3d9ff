// The QRNG stops on a health failure, stays stopped until a new start-up test passes, and reports its numbers.
import { describe, expect, it } from 'vitest';
import type { NoiseSource } from '../../hsm-emulator/noise-source.js';
import { FaultyNoiseSource, OsNoiseSource, SeededNoiseSource } from '../../hsm-emulator/noise-source.js';
import { Qrng, QrngHealthError, STARTUP_SAMPLES } from '../../hsm-emulator/qrng.js';

function healthError(fn: () => unknown): QrngHealthError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(QrngHealthError);
    return err as QrngHealthError;
  }
  throw new Error('expected a QrngHealthError');
}

/** A source that misbehaves while `broken` is true. */
class SwitchableSource implements NoiseSource {
  readonly name = 'switchable';
  readonly minEntropy = 6;
  broken = false;
  private readonly healthy = new OsNoiseSource();
  read(out: Uint8Array): void {
    if (this.broken) out.fill(0x33);
    else this.healthy.read(out);
  }
}

describe('Qrng', () => {
  it('emits non-repeating output and counts bytes, raw samples and reseeds', () => {
    const q = new Qrng({ reseedBytes: 4096 });
    const a = q.bytes(4096);
    const b = q.bytes(4096);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
    expect(new Set(a).size).toBeGreaterThan(200);
    const s = q.status();
    expect(s).toMatchObject({
      source: 'os',
      bytesOut: 8192,
      healthy: true,
      failures: { 'repetition-count': 0, 'adaptive-proportion': 0 },
    });
    expect(s.rawSamples).toBe(STARTUP_SAMPLES + 2 * 512);
    expect(s.reseeds).toBe(2);
  });

  it('refuses to start on a stuck source and names the start-up test', () => {
    const q = new Qrng({ source: new FaultyNoiseSource(new SeededNoiseSource('x'), { kind: 'stuck', after: 0 }) });
    expect(healthError(() => q.bytes(16)).test).toBe('startup');
    expect(q.status().healthy).toBe(false);
  });

  it('stops emitting the moment a reseed fails, and resumes only after a new start-up test passes', () => {
    const src = new SwitchableSource();
    const q = new Qrng({ source: src, reseedBytes: 1024 });
    q.bytes(1024);
    src.broken = true;
    const err = healthError(() => q.bytes(2048));
    expect(err.test).toBe('repetition-count');
    expect(err.code).toBe('QRNG_ERR_HEALTH');
    expect(err.message).toMatch(/emits nothing until a new start-up test passes/);
    expect(healthError(() => q.bytes(1)).test).toBe('startup');
    expect(q.status().failures['repetition-count']).toBeGreaterThanOrEqual(2);
    src.broken = false;
    expect(q.bytes(32)).toHaveLength(32);
    expect(q.status().healthy).toBe(true);
  });

  it('the seeded source makes the output reproducible (for tests only)', () => {
    const a = new Qrng({ source: new SeededNoiseSource('same') }).bytes(64);
    const b = new Qrng({ source: new SeededNoiseSource('same') }).bytes(64);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
  });

  it('validates its reseed interval', () => {
    expect(() => new Qrng({ reseedBytes: 10 })).toThrow(RangeError);
  });
});
