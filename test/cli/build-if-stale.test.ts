// scripts/build-if-stale.mjs, which `npm start` runs: a build only when dist/ is missing or older than a source.
import { mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { buildInputs, staleReason } from '../../scripts/build-if-stale.mjs';
import { removeDir, tempDir } from '../helpers/kms.js';

const root = tempDir('qkey-stale-');
afterAll(() => removeDir(root));

function file(path: string, text = '', mtimeSec = 1_000_000): string {
  const full = join(root, path);
  mkdirSync(join(full, '..'), { recursive: true });
  writeFileSync(full, text);
  utimesSync(full, mtimeSec, mtimeSec);
  return full;
}

it('builds when dist/ is missing, skips when it is newer than every input, builds again after any change', () => {
  file('tsconfig.build.json', JSON.stringify({ include: ['cli', 'broker'] }));
  file('tsconfig.json', '{}');
  file('package.json', '{}');
  file('cli/qkey.ts', 'export {};');
  file('broker/deep/plugin.ts', 'export {};');
  file('broker/notes.md', 'not an input');
  expect(staleReason(root)).toBe('dist/ has not been built');
  file('dist/.tsbuildinfo', '{}', 2_000_000);
  expect(staleReason(root)).toBe('dist/ has not been built'); // no bin.js: a build that never finished
  file('dist/cli/bin.js', '', 2_000_000);
  expect(staleReason(root)).toBeNull();
  expect(
    buildInputs(root)
      .map((f) => f.slice(root.length))
      .sort(),
  ).toEqual(['/broker/deep/plugin.ts', '/cli/qkey.ts', '/package.json', '/tsconfig.build.json', '/tsconfig.json']);
  file('broker/notes.md', 'changed', 3_000_000);
  expect(staleReason(root)).toBeNull();
  file('broker/deep/plugin.ts', 'export const x = 1;', 3_000_000);
  expect(staleReason(root)).toBe('/broker/deep/plugin.ts changed since the last build');
  file('dist/.tsbuildinfo', '{}', 4_000_000);
  file('package.json', '{"version":"2"}', 5_000_000);
  expect(staleReason(root)).toBe('/package.json changed since the last build');
});
