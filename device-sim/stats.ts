// Counters and latency percentiles for a simulation run (pure).

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** Tracks what an application received from each device: duplicates, gaps (loss) and latency. */
export class DeliveryLedger {
  private readonly seen = new Map<string, Set<number>>();
  private readonly latencies: number[] = [];
  received = 0;
  duplicated = 0;
  corrupted = 0;

  record(deviceId: string, seq: number, latencyMs: number): void {
    let set = this.seen.get(deviceId);
    if (!set) this.seen.set(deviceId, (set = new Set()));
    if (set.has(seq)) {
      this.duplicated++;
      return;
    }
    set.add(seq);
    this.received++;
    this.latencies.push(latencyMs);
  }

  /** Messages sent but never received, given how many each device sent (seq 0..n-1). */
  lost(sentPerDevice: ReadonlyMap<string, number>): number {
    let lost = 0;
    for (const [id, n] of sentPerDevice) lost += n - (this.seen.get(id)?.size ?? 0);
    return lost;
  }

  latency(): { p50: number; p95: number; p99: number; max: number } {
    const s = [...this.latencies].sort((a, b) => a - b);
    return { p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99), max: s[s.length - 1] ?? 0 };
  }
}
