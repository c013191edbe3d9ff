// The rotation notice's wire form (docs/PROTOCOL.md §22.6): what the broker writes parses back to its generation, and
// nothing else on the session topic passes as a notice.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseRotationNotice, rotationNotice } from '../../protocol/index.js';

const bytes = (s: string) => new TextEncoder().encode(s);

describe('rotation notice', () => {
  it('is {"rotate": n} and parses back, for every generation', () => {
    expect(new TextDecoder().decode(rotationNotice(7))).toBe('{"rotate":7}');
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => parseRotationNotice(rotationNotice(n)) === n),
    );
  });

  it('refuses anything else', () => {
    for (const text of [
      '',
      '{}',
      '[]',
      'null',
      '7',
      '{"rotate":-1}',
      '{"rotate":1.5}',
      '{"rotate":4294967296}',
      '{"rotate":"1"}',
      '{"rotate":1,"key_ID":"x"}',
      '{"key_ID":"5ecacb24-9640-8e9c-8317-efea7c5d7cde","key_index":1}', // an announcement
      `{"rotate":1${' '.repeat(64)}}`,
    ])
      expect(parseRotationNotice(bytes(text)), text).toBeUndefined();
    expect(parseRotationNotice(new Uint8Array([0x7b, 0xff, 0x7d]))).toBeUndefined(); // not UTF-8
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), (b) => {
        const n = parseRotationNotice(b);
        return n === undefined || (Number.isInteger(n) && n >= 0);
      }),
    );
  });
});
