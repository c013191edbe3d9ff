// NIST SP 800-90B §4.4 continuous health tests over byte samples: repetition count and adaptive proportion.

/** SP 800-90B §4.4: false-positive probability per test decision, 2^-20. */
export const ALPHA_LOG2 = 20;
/** SP 800-90B §4.4.2: window size for non-binary samples. */
export const APT_WINDOW = 512;

/** §4.4.1: C = 1 + ceil(-log2(alpha) / H). */
export function repetitionCountCutoff(minEntropy: number): number {
  checkEntropy(minEntropy);
  return 1 + Math.ceil(ALPHA_LOG2 / minEntropy);
}

/**
 * §4.4.2: C = 1 + CRITBINOM(W, 2^-H, 1 - alpha), where CRITBINOM(n, p, q) is the smallest k with
 * P[Binomial(n, p) <= k] >= q. Computed in log space so W = 512 stays exact enough.
 */
export function adaptiveProportionCutoff(minEntropy: number, window = APT_WINDOW): number {
  checkEntropy(minEntropy);
  const p = 2 ** -minEntropy;
  const target = 1 - 2 ** -ALPHA_LOG2;
  const logP = Math.log(p);
  const logQ = Math.log1p(-p);
  let logC = 0; // log of binomial coefficient C(n, k)
  let cdf = 0;
  for (let k = 0; k <= window; k++) {
    if (k > 0) logC += Math.log(window - k + 1) - Math.log(k);
    cdf += Math.exp(logC + k * logP + (window - k) * logQ);
    if (cdf >= target) return 1 + k;
  }
  return window;
}

function checkEntropy(h: number): void {
  if (!(h > 0 && h <= 8)) throw new RangeError('min-entropy per byte sample must be in (0, 8]');
}

export type HealthFailure = 'repetition-count' | 'adaptive-proportion';

/**
 * Both continuous tests, fed one sample at a time in the order the source produced them.
 * `feed` returns the failing test's name or undefined; state persists across calls, as the tests require.
 */
export class HealthTests {
  readonly rctCutoff: number;
  readonly aptCutoff: number;
  private last = -1;
  private run = 0;
  private aptBase = 0;
  private aptCount = 0;
  private aptSeen = 0;

  constructor(readonly minEntropy: number) {
    this.rctCutoff = repetitionCountCutoff(minEntropy);
    this.aptCutoff = adaptiveProportionCutoff(minEntropy);
  }

  /** Runs both tests over `samples`; stops at and reports the first failure. */
  feed(samples: Uint8Array): HealthFailure | undefined {
    const rct = this.rctCutoff;
    const apt = this.aptCutoff;
    for (let i = 0; i < samples.length; i++) {
      const x = samples[i] as number;
      // §4.4.1: count identical consecutive samples; fail when the run reaches C.
      if (x === this.last) {
        if (++this.run >= rct) return this.fail('repetition-count');
      } else {
        this.last = x;
        this.run = 1;
      }
      // §4.4.2: the first sample of each window is counted against the rest of the window.
      if (this.aptSeen === 0) {
        this.aptBase = x;
        this.aptCount = 1;
        this.aptSeen = 1;
      } else {
        if (x === this.aptBase && ++this.aptCount >= apt) return this.fail('adaptive-proportion');
        if (++this.aptSeen === APT_WINDOW) this.aptSeen = 0;
      }
    }
    return undefined;
  }

  reset(): void {
    this.last = -1;
    this.run = 0;
    this.aptSeen = 0;
  }

  private fail(which: HealthFailure): HealthFailure {
    this.reset();
    return which;
  }
}
