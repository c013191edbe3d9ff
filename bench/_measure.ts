// Benchmark helpers: time-bounded loops, interleaved rounds and medians, so shared-machine noise hits every case alike.

export interface Case {
  name: string;
  /** One operation; returns something so the work cannot be optimised away. */
  run: () => unknown;
}

/** Operations per second of `fn`, running it for about `ms` milliseconds. */
export function opsPerSecond(fn: () => unknown, ms: number): number {
  let sink = 0;
  // Warm up the JIT and caches before timing.
  for (let i = 0; i < 50; i++) sink ^= fn() ? 1 : 0;
  let ops = 0;
  const start = process.hrtime.bigint();
  const budget = BigInt(ms) * 1_000_000n;
  let elapsed = 0n;
  while (elapsed < budget) {
    for (let i = 0; i < 20; i++) sink ^= fn() ? 1 : 0;
    ops += 20;
    elapsed = process.hrtime.bigint() - start;
  }
  if (sink === 42) process.stdout.write('');
  return (ops * 1e9) / Number(elapsed);
}

/** Runs every case once per round, `rounds` times, interleaved; returns each case's median rate. */
export function measureInterleaved(cases: Case[], rounds: number, ms: number): Map<string, number> {
  const samples = new Map<string, number[]>(cases.map((c) => [c.name, []]));
  for (let r = 0; r < rounds; r++) {
    for (const c of cases) samples.get(c.name)!.push(opsPerSecond(c.run, ms));
  }
  return new Map([...samples].map(([name, s]) => [name, median(s)]));
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function formatRate(opsPerSec: number): string {
  if (opsPerSec >= 1e6) return `${(opsPerSec / 1e6).toFixed(2)} M/s`;
  if (opsPerSec >= 1e3) return `${(opsPerSec / 1e3).toFixed(1)} k/s`;
  return `${opsPerSec.toFixed(0)} /s`;
}

export function formatBytesPerSecond(bytesPerSec: number): string {
  return `${(bytesPerSec / 2 ** 20).toFixed(1)} MiB/s`;
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) => r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  '))
    .join('\n');
}
