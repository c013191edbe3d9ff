// Runs `qkey` in this process through main(), capturing what it prints and its exit status.
import { main } from '../../cli/qkey.js';

export async function runQkey(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}
