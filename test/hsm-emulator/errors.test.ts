// Every chip error code is documented in docs/ARCHITECTURE.md, and the documented list has no stale codes.
import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { CHIP_ERRORS } from '../../hsm-emulator/chip-errors.js';

it('documents exactly the chip error codes', () => {
  const doc = readFileSync(new URL('../../docs/ARCHITECTURE.md', import.meta.url), 'utf8');
  const documented = [...doc.matchAll(/^\| `(CHIP_ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]);
  expect(documented.sort()).toEqual(Object.keys(CHIP_ERRORS).sort());
});
