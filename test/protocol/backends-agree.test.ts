// Property tests: the native (OpenSSL) and portable (sm-crypto) backends agree on random keys, IVs and lengths.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { nativeBackend as n, portableBackend as p } from '../../protocol/backend.js';
import {
  EnvelopeKey,
  openEnvelope,
  SUITE_SM4_CTR_HMAC_SM3,
  SUITE_SM4_GCM,
  sealEnvelope,
} from '../../protocol/index.js';
import { toHex } from '../helpers/vectors.js';

const key = fc.uint8Array({ minLength: 16, maxLength: 16 });
const iv = fc.uint8Array({ minLength: 16, maxLength: 16 });
const data = fc.uint8Array({ minLength: 0, maxLength: 300 });
const blocks = fc.integer({ min: 0, max: 12 }).chain((n) => fc.uint8Array({ minLength: n * 16, maxLength: n * 16 }));
const opts = { numRuns: 60 };

describe('native and portable backends agree', () => {
  it('SM4-ECB', () => {
    fc.assert(
      fc.property(key, blocks, (k, b) => {
        expect(toHex(n.createBlockCipher(k).encryptBlocks(b))).toBe(toHex(p.createBlockCipher(k).encryptBlocks(b)));
      }),
      opts,
    );
  });
  it('SM4-CTR, including counters that carry across 32-bit boundaries', () => {
    const carryIv = fc
      .uint8Array({ minLength: 12, maxLength: 12 })
      .map((h) => Uint8Array.from([...h, 0xff, 0xff, 0xff, 0xfe]));
    fc.assert(
      fc.property(key, fc.oneof(iv, carryIv), data, (k, i, d) => {
        expect(toHex(n.sm4Ctr(k, i, d))).toBe(toHex(p.sm4Ctr(k, i, d)));
      }),
      opts,
    );
  });
  it('SM4-CBC both ways', () => {
    fc.assert(
      fc.property(key, iv, blocks, (k, i, b) => {
        const ct = n.sm4CbcEncrypt(k, i, b);
        expect(toHex(ct)).toBe(toHex(p.sm4CbcEncrypt(k, i, b)));
        expect(toHex(p.sm4CbcDecrypt(k, i, ct))).toBe(toHex(b));
      }),
      opts,
    );
  });
  it('SM3 and HMAC-SM3', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), data, (k, d) => {
        expect(toHex(n.sm3(d))).toBe(toHex(p.sm3(d)));
        expect(toHex(n.hmacSm3(k, d))).toBe(toHex(p.hmacSm3(k, d)));
      }),
      opts,
    );
  });
  it('sealed envelopes, both suites: identical bytes, and each opens the other', () => {
    const suite = fc.constantFrom(SUITE_SM4_GCM, SUITE_SM4_CTR_HMAC_SM3);
    const body = fc.uint8Array({ minLength: 1, maxLength: 300 });
    fc.assert(
      fc.property(key, suite, body, fc.nat(), fc.nat(), (k, s, b, ki, seq) => {
        const ctx = { deviceId: 'd', topic: 'devices/d/down/cmd', direction: 'down' as const };
        const nk = new EnvelopeKey(k, n);
        const pk = new EnvelopeKey(k, p);
        const a = sealEnvelope(b, { key: nk, keyIndex: ki, seq, suite: s, ...ctx });
        expect(toHex(sealEnvelope(b, { key: pk, keyIndex: ki, seq, suite: s, ...ctx }))).toBe(toHex(a));
        expect(toHex(openEnvelope(a, { key: pk, ...ctx }).payload)).toBe(toHex(b));
      }),
      { numRuns: 40 },
    );
  });
});
