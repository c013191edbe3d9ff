// The browser client's crypto backend (browser/backend.ts) in Node: SM4 against GB/T 32907, SM4-GCM against
// RFC 8998, SM3 against GB/T 32905, every envelope vector of docs/PROTOCOL.md, and the same bytes as the native
// backend for random keys, payloads, topics and sequence numbers. The page runs the same checks (client.test.ts).
import { randomBytes, randomInt } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { browserBackend, getBackend } from '../../browser/backend.js';
import { GcmKey } from '../../protocol/gcm.js';
import {
  bytesToHex,
  type Direction,
  EnvelopeKey,
  getBackend as nodeBackend,
  hexToBytes,
  openEnvelope,
  sealEnvelope,
} from '../../protocol/index.js';
import { type GcmVector, loadVectors, type Sm4Vector } from '../helpers/vectors.js';

const native = nodeBackend('auto');
const h = (s: string) => hexToBytes(s);

describe('browser backend known answers', () => {
  it('SM4 block: GB/T 32907-2016 Appendix A example 1', () => {
    const [one] = loadVectors<Sm4Vector>('gbt32907-sm4.json').vectors.filter((v) => v.iterations === 1);
    expect(bytesToHex(browserBackend.createBlockCipher(h(one!.key)).encryptBlocks(h(one!.plaintext)))).toBe(
      one!.ciphertext,
    );
  });

  it('SM4-GCM (protocol/gcm.ts over this SM4): RFC 8998 Appendix A.1', () => {
    for (const v of loadVectors<GcmVector>('rfc8998-sm4-gcm.json').vectors) {
      const gcm = new GcmKey(browserBackend.createBlockCipher(h(v.key)));
      const { ciphertext, tag } = gcm.seal(h(v.iv), h(v.aad), h(v.plaintext));
      expect(bytesToHex(ciphertext)).toBe(v.ciphertext);
      expect(bytesToHex(tag)).toBe(v.tag);
      expect(bytesToHex(gcm.open(h(v.iv), h(v.aad), ciphertext, tag)!)).toBe(v.plaintext);
    }
  });

  it('SM3: GB/T 32905-2016 Appendix A', () => {
    for (const v of loadVectors<{ input: string; digest: string }>('sm3.json').vectors)
      expect(bytesToHex(browserBackend.sm3(h(v.input)))).toBe(v.digest);
  });

  it('the envelope vectors of docs/PROTOCOL.md §10 and §22.5', () => {
    type V = {
      key: string;
      suite: 1 | 2;
      keyIndex: number;
      seq: number;
      deviceId?: string;
      appId?: string;
      topic: string;
      direction: Direction;
      payload: string;
      envelope: string;
    };
    const all = [
      ...loadVectors<V>('qkey-envelope.json').vectors,
      ...loadVectors<V>('qkey-app-envelope.json').vectors,
    ].filter((v) => v.envelope);
    expect(all.length).toBeGreaterThanOrEqual(4);
    for (const v of all) {
      const ctx = { deviceId: (v.deviceId ?? v.appId)!, topic: v.topic, direction: v.direction };
      const key = new EnvelopeKey(h(v.key), browserBackend);
      const sealed = sealEnvelope(h(v.payload), { ...ctx, key, keyIndex: v.keyIndex, seq: v.seq, suite: v.suite });
      expect(bytesToHex(sealed)).toBe(v.envelope);
      expect(bytesToHex(openEnvelope(sealed, { ...ctx, key }).payload)).toBe(v.payload);
    }
  });

  it('getBackend answers the browser backend, and refuses to pretend it is native', () => {
    expect(getBackend('auto')).toBe(browserBackend);
    expect(getBackend('portable')).toBe(browserBackend);
    expect(() => getBackend('native')).toThrow(/not in a browser/);
  });
});

describe('browser backend against the native backend, random inputs', () => {
  it("protocol/_bytes.ts's hex (no Buffer, for the page) agrees with Buffer's, either letter case", () => {
    for (let n = 0; n < 300; n++) {
      const bytes = randomBytes(n);
      const hex = bytes.toString('hex');
      expect(bytesToHex(bytes)).toBe(hex);
      expect(Buffer.from(hexToBytes(hex)).equals(bytes)).toBe(true);
      expect(Buffer.from(hexToBytes(hex.toUpperCase())).equals(bytes)).toBe(true);
    }
    for (const bad of ['0', 'zz', '0g', ' 00', '0x00']) expect(() => hexToBytes(bad)).toThrow();
  });

  it('SM4 blocks, CTR, CBC, SM3 and HMAC-SM3 agree', () => {
    for (let i = 0; i < 50; i++) {
      const key = randomBytes(16);
      const iv = randomBytes(16);
      const blocks = randomBytes(16 * randomInt(1, 9));
      const data = randomBytes(randomInt(0, 200));
      expect(bytesToHex(browserBackend.createBlockCipher(key).encryptBlocks(blocks))).toBe(
        bytesToHex(native.createBlockCipher(key).encryptBlocks(blocks)),
      );
      expect(bytesToHex(browserBackend.sm4Ctr(key, iv, data))).toBe(bytesToHex(native.sm4Ctr(key, iv, data)));
      const cbc = browserBackend.sm4CbcEncrypt(key, iv, blocks);
      expect(bytesToHex(cbc)).toBe(bytesToHex(native.sm4CbcEncrypt(key, iv, blocks)));
      expect(bytesToHex(browserBackend.sm4CbcDecrypt(key, iv, cbc))).toBe(bytesToHex(blocks));
      expect(bytesToHex(browserBackend.sm3(data))).toBe(bytesToHex(native.sm3(data)));
      expect(bytesToHex(browserBackend.hmacSm3(key, data))).toBe(bytesToHex(native.hmacSm3(key, data)));
    }
  });

  it('envelopes: sealed byte for byte alike, and each opens the other', () => {
    const directions: Direction[] = ['up', 'down', 'will', 'app-up', 'app-down'];
    for (let i = 0; i < 200; i++) {
      const raw = randomBytes(16);
      const payload = randomBytes(randomInt(1, 600));
      const ctx = {
        deviceId: `app-${randomInt(0, 1e6)}`,
        topic: `t/${randomBytes(randomInt(1, 40)).toString('base64url')}`,
        direction: directions[i % directions.length]!,
      };
      const header = { keyIndex: randomInt(0, 2 ** 32), seq: randomInt(0, 2 ** 32), suite: (1 + (i % 2)) as 1 | 2 };
      const b = new EnvelopeKey(raw, browserBackend);
      const n = new EnvelopeKey(raw, native);
      const sealed = sealEnvelope(payload, { ...ctx, ...header, key: b });
      expect(bytesToHex(sealed)).toBe(bytesToHex(sealEnvelope(payload, { ...ctx, ...header, key: n })));
      expect(bytesToHex(openEnvelope(sealed, { ...ctx, key: n }).payload)).toBe(bytesToHex(payload));
      sealed[randomInt(0, sealed.length)]! ^= 1 << randomInt(0, 8);
      expect(() => openEnvelope(sealed, { ...ctx, key: b })).toThrow();
    }
  });
});
