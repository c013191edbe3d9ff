// Every protocol error code is documented in docs/PROTOCOL.md, and the documented list has no stale codes.
import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { PROTOCOL_ERROR_CODES } from '../../protocol/index.js';

it('documents exactly the codes the code can raise', () => {
  const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
  const documented = new Set(doc.match(/PROTO_ERR_[A-Z_]+/g));
  expect([...documented].sort()).toEqual(Object.keys(PROTOCOL_ERROR_CODES).sort());
});
