// Noise sources for the emulated QRNG: the OS CSPRNG standing in for the photon detector, a seeded one for
// tests, and fault injection (stuck-at, biased, intermittent) that the health tests must catch.
import { createHash, randomFillSync } from 'node:crypto';

export interface NoiseSource {
  readonly name: string;
  /** Declared min-entropy per byte sample, in bits; the health-test cutoffs are computed from it. */
  readonly minEntropy: number;
  /** Fills `out` with raw samples. */
  read(out: Uint8Array): void;
}

/**
 * Stands in for the photon-detector source. The OS CSPRNG has full entropy; we declare 6 bits per byte, a
 * conservative figure for a physical detector, which also keeps health-test false alarms near 2^-20 or below.
 */
export class OsNoiseSource implements NoiseSource {
  readonly name = 'os';
  readonly minEntropy = 6;
  read(out: Uint8Array): void {
    randomFillSync(out);
  }
}

/** Deterministic samples (SHA-256 in counter mode) for reproducible tests. Never use for keys. */
export class SeededNoiseSource implements NoiseSource {
  readonly name = 'seeded';
  readonly minEntropy = 6;
  private counter = 0;
  private pool = Buffer.alloc(0);

  constructor(private readonly seed: string) {}

  read(out: Uint8Array): void {
    let filled = 0;
    while (filled < out.length) {
      if (this.pool.length === 0) this.pool = createHash('sha256').update(`${this.seed}:${this.counter++}`).digest();
      const n = Math.min(this.pool.length, out.length - filled);
      out.set(this.pool.subarray(0, n), filled);
      this.pool = this.pool.subarray(n);
      filled += n;
    }
  }
}

export type FaultMode =
  /** After `after` healthy bytes, every sample is `value`. */
  | { kind: 'stuck'; after: number; value?: number }
  /** Each sample is `value` with probability `probability`, else healthy. */
  | { kind: 'biased'; probability: number; value?: number }
  /** Every `period` bytes, a burst of `burst` identical samples. */
  | { kind: 'intermittent'; period: number; burst: number };

/** Wraps a healthy source and injects one fault mode, for testing that the right health test trips. */
export class FaultyNoiseSource implements NoiseSource {
  readonly name: string;
  readonly minEntropy: number;
  private produced = 0;
  /** xorshift32 state: fault injection is deterministic, so tests that use it are reproducible. */
  private rng = 0x9e3779b9;

  constructor(
    private readonly inner: NoiseSource,
    private readonly fault: FaultMode,
  ) {
    this.name = `${inner.name}+${fault.kind}`;
    this.minEntropy = inner.minEntropy;
  }

  read(out: Uint8Array): void {
    this.inner.read(out);
    const f = this.fault;
    for (let i = 0; i < out.length; i++, this.produced++) {
      if (f.kind === 'stuck' && this.produced >= f.after) out[i] = f.value ?? 0xaa;
      else if (f.kind === 'biased' && this.uniform() < f.probability) out[i] = f.value ?? 0x5a;
      else if (f.kind === 'intermittent' && this.produced % f.period < f.burst) out[i] = 0x00;
    }
  }

  private uniform(): number {
    let x = this.rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    return this.rng / 2 ** 32;
  }
}
