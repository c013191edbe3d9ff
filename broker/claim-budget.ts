// A per-device budget of downlink key claims (a token bucket): whoever holds a device's token cannot drain its
// downlink pool by reconnecting, since every connection that receives a command claims a key (docs/PROTOCOL.md §9.3).

export class ClaimBudget {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  /**
   * @param perMinute claims a device may make per minute, sustained; also the burst.
   */
  constructor(
    private readonly perMinute: number,
    private readonly now: () => number = () => Date.now(),
  ) {}

  /** Takes one claim from the device's budget; false when it is spent (refill: perMinute per minute). */
  take(deviceId: string): boolean {
    const now = this.now();
    const b = this.buckets.get(deviceId) ?? { tokens: this.perMinute, at: now };
    b.tokens = Math.min(this.perMinute, b.tokens + ((now - b.at) * this.perMinute) / 60_000);
    b.at = now;
    if (b.tokens < 1) {
      this.buckets.set(deviceId, b);
      return false;
    }
    b.tokens -= 1;
    this.buckets.set(deviceId, b);
    if (this.buckets.size > 10_000) this.prune(now);
    return true;
  }

  /** Forgets devices whose bucket has refilled: a full bucket is the same as no entry. */
  private prune(now: number): void {
    for (const [id, b] of this.buckets)
      if (b.tokens + ((now - b.at) * this.perMinute) / 60_000 >= this.perMinute) this.buckets.delete(id);
  }
}
