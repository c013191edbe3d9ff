// Every key-service error code is documented in docs/KMS-API.md with its HTTP status, and nothing stale is.
import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { KMS_ERRORS } from '../../key-service/errors.js';

it('documents exactly the codes the key service can return, with the right status', () => {
  const doc = readFileSync(new URL('../../docs/KMS-API.md', import.meta.url), 'utf8');
  const rows = [...doc.matchAll(/^\| `(KMS_ERR_[A-Z_]+)` \| (\d{3}) \|/gm)].map((m) => [m[1], Number(m[2])]);
  expect(new Map(rows as Array<[string, number]>)).toEqual(
    new Map(Object.entries(KMS_ERRORS).map(([code, e]) => [code, e.status])),
  );
});
