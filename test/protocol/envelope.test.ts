// Envelope tests: round trips, context binding, every error code, bit flips, and no secrets in error messages.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type CryptoBackend,
  DEFAULT_MAX_PAYLOAD,
  ENVELOPE_OVERHEAD,
  EnvelopeKey,
  nativeBackend,
  openEnvelope,
  ProtocolError,
  parseEnvelope,
  portableBackend,
  ReplayWindow,
  SUITE_SM4_CTR_HMAC_SM3,
  SUITE_SM4_GCM,
  type SuiteId,
  sealEnvelope,
} from '../../protocol/index.js';
import { toHex } from '../helpers/vectors.js';

const KEY = Uint8Array.from({ length: 16 }, (_, i) => i * 17);
const ctx = { deviceId: 'dev-1', topic: 'devices/dev-1/up/telemetry', direction: 'up' as const };
const payload = new TextEncoder().encode('{"temperature":21.5}');

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return (err as ProtocolError).code;
  }
  return 'NO_ERROR';
}

describe.each<[string, CryptoBackend, SuiteId]>([
  ['native SM4-GCM', nativeBackend, SUITE_SM4_GCM],
  ['native SM4-CTR-HMAC-SM3', nativeBackend, SUITE_SM4_CTR_HMAC_SM3],
  ['portable SM4-GCM', portableBackend, SUITE_SM4_GCM],
  ['portable SM4-CTR-HMAC-SM3', portableBackend, SUITE_SM4_CTR_HMAC_SM3],
])('%s', (_, backend, suite) => {
  const key = new EnvelopeKey(KEY, backend);
  const seal = (p: Uint8Array, seq = 1, over: Partial<typeof ctx> = {}) =>
    sealEnvelope(p, { key, keyIndex: 42, seq, suite, ...ctx, ...over });

  it('round-trips payloads of many lengths and reports the header', () => {
    for (const len of [1, 15, 16, 17, 64, 255, 1024, 4097]) {
      const p = Uint8Array.from({ length: len }, (_, i) => (i * 7) & 0xff);
      const env = seal(p, len);
      expect(env.length).toBe(len + ENVELOPE_OVERHEAD);
      const opened = openEnvelope(env, { key, ...ctx });
      expect(toHex(opened.payload)).toBe(toHex(p));
      expect(opened.header).toEqual({ version: 1, suite, keyIndex: 42, seq: len });
    }
  });

  it('binds device, topic, direction and key: each mismatch is PROTO_ERR_TAG', () => {
    const env = seal(payload);
    expect(codeOf(() => openEnvelope(env, { key, ...ctx, deviceId: 'dev-2' }))).toBe('PROTO_ERR_TAG');
    expect(codeOf(() => openEnvelope(env, { key, ...ctx, topic: 'devices/dev-1/up/other' }))).toBe('PROTO_ERR_TAG');
    expect(codeOf(() => openEnvelope(env, { key, ...ctx, direction: 'down' }))).toBe('PROTO_ERR_TAG');
    const otherKey = new EnvelopeKey(
      KEY.map((b) => b ^ 0x80),
      backend,
    );
    expect(codeOf(() => openEnvelope(env, { key: otherKey, ...ctx }))).toBe('PROTO_ERR_TAG');
  });

  it('rejects every single-bit flip anywhere in the envelope', () => {
    const env = seal(payload, 9);
    for (let bit = 0; bit < env.length * 8; bit++) {
      const bad = env.slice();
      bad[bit >> 3]! ^= 1 << (bit & 7);
      const code = codeOf(() => openEnvelope(bad, { key, ...ctx }));
      expect(['PROTO_ERR_TAG', 'PROTO_ERR_VERSION', 'PROTO_ERR_SUITE']).toContain(code);
    }
  });
});

describe('envelope errors', () => {
  const key = new EnvelopeKey(KEY);
  const env = sealEnvelope(payload, { key, keyIndex: 3, seq: 5, ...ctx });

  it('PROTO_ERR_TRUNCATED below header + tag + 1 byte', () => {
    for (const len of [0, 1, 10, ENVELOPE_OVERHEAD]) {
      expect(codeOf(() => openEnvelope(env.subarray(0, len), { key, ...ctx }))).toBe('PROTO_ERR_TRUNCATED');
    }
  });

  it('PROTO_ERR_VERSION and PROTO_ERR_SUITE for unknown values, and for a suite the receiver disallows', () => {
    const v2 = env.slice();
    v2[0] = 2;
    expect(codeOf(() => openEnvelope(v2, { key, ...ctx }))).toBe('PROTO_ERR_VERSION');
    const s9 = env.slice();
    s9[1] = 9;
    expect(codeOf(() => openEnvelope(s9, { key, ...ctx }))).toBe('PROTO_ERR_SUITE');
    expect(codeOf(() => openEnvelope(env, { key, ...ctx, allowedSuites: [SUITE_SM4_CTR_HMAC_SM3] }))).toBe(
      'PROTO_ERR_SUITE',
    );
  });

  it('PROTO_ERR_TOO_LARGE on seal and on open, with the default and a configured limit', () => {
    const big = new Uint8Array(DEFAULT_MAX_PAYLOAD + 1);
    expect(codeOf(() => sealEnvelope(big, { key, keyIndex: 1, seq: 1, ...ctx }))).toBe('PROTO_ERR_TOO_LARGE');
    expect(codeOf(() => openEnvelope(env, { key, ...ctx, maxPayload: payload.length - 1 }))).toBe(
      'PROTO_ERR_TOO_LARGE',
    );
    expect(openEnvelope(env, { key, ...ctx, maxPayload: payload.length }).payload.length).toBe(payload.length);
  });

  it('PROTO_ERR_EMPTY: empty payloads are never sealed', () => {
    expect(codeOf(() => sealEnvelope(new Uint8Array(0), { key, keyIndex: 1, seq: 1, ...ctx }))).toBe('PROTO_ERR_EMPTY');
  });

  it('PROTO_ERR_ARGUMENT for out-of-range fields and bad keys', () => {
    const base = { key, keyIndex: 1, seq: 1, ...ctx };
    expect(codeOf(() => sealEnvelope(payload, { ...base, seq: 2 ** 32 }))).toBe('PROTO_ERR_ARGUMENT');
    expect(codeOf(() => sealEnvelope(payload, { ...base, keyIndex: -1 }))).toBe('PROTO_ERR_ARGUMENT');
    expect(codeOf(() => sealEnvelope(payload, { ...base, deviceId: '' }))).toBe('PROTO_ERR_ARGUMENT');
    expect(codeOf(() => sealEnvelope(payload, { ...base, topic: 't'.repeat(70000) }))).toBe('PROTO_ERR_ARGUMENT');
    expect(codeOf(() => sealEnvelope(payload, { ...base, key: new Uint8Array(15) }))).toBe('PROTO_ERR_ARGUMENT');
    expect(codeOf(() => new EnvelopeKey(new Uint8Array(32)))).toBe('PROTO_ERR_ARGUMENT');
  });

  it('never puts key, nonce or plaintext bytes in an error message', () => {
    const secretHex = toHex(KEY);
    const plainHex = toHex(payload);
    const bad = env.slice();
    bad[env.length - 1]! ^= 1;
    for (const attempt of [
      () => openEnvelope(bad, { key: KEY, ...ctx }),
      () => openEnvelope(env, { key: KEY, ...ctx, topic: 'x' }),
      () => sealEnvelope(payload, { key: KEY.subarray(1), keyIndex: 1, seq: 1, ...ctx }),
      () => sealEnvelope(new Uint8Array(DEFAULT_MAX_PAYLOAD + 1), { key: KEY, keyIndex: 1, seq: 1, ...ctx }),
    ]) {
      try {
        attempt();
        expect.unreachable();
      } catch (err) {
        const text = `${(err as Error).message} ${(err as Error).stack}`;
        expect(text).not.toContain(secretHex);
        expect(text).not.toContain(plainHex);
        expect(text).not.toContain('temperature');
      }
    }
  });

  it('parseEnvelope reads the header without a key', () => {
    const parsed = parseEnvelope(env);
    expect(parsed).toMatchObject({ version: 1, suite: SUITE_SM4_GCM, keyIndex: 3, seq: 5 });
    expect(parsed.ciphertext.length).toBe(payload.length);
  });
});

describe('replay window in openEnvelope', () => {
  const key = new EnvelopeKey(KEY);
  const seal = (seq: number) => sealEnvelope(payload, { key, keyIndex: 1, seq, ...ctx });

  it('accepts each sequence number once, out of order inside the window, and refuses what is too old', () => {
    const replay = new ReplayWindow(64);
    const open = (seq: number) => openEnvelope(seal(seq), { key, ...ctx, replay });
    open(10);
    open(7);
    open(100);
    expect(codeOf(() => open(10))).toBe('PROTO_ERR_REPLAY');
    expect(codeOf(() => open(100))).toBe('PROTO_ERR_REPLAY');
    expect(codeOf(() => open(36))).toBe('PROTO_ERR_REPLAY'); // 100 - 36 = 64: outside a 64-wide window
    open(37);
    open(99);
  });

  it('a forged envelope neither moves the window nor burns its sequence number', () => {
    const replay = new ReplayWindow();
    openEnvelope(seal(1), { key, ...ctx, replay });
    const forged = seal(1_000_000);
    forged[forged.length - 1]! ^= 1;
    expect(codeOf(() => openEnvelope(forged, { key, ...ctx, replay }))).toBe('PROTO_ERR_TAG');
    expect(replay.highest).toBe(1);
    openEnvelope(seal(2), { key, ...ctx, replay });
    openEnvelope(seal(1_000_000), { key, ...ctx, replay });
  });
});

describe('ReplayWindow', () => {
  it('matches a reference set model on random sequences', () => {
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 600 }), { maxLength: 300 }), (seqs) => {
        const w = new ReplayWindow(64);
        const seen = new Set<number>();
        let top = -1;
        for (const s of seqs) {
          const expectOk = !seen.has(s) && (s > top || top - s < 64);
          let ok = true;
          try {
            w.accept(s);
          } catch {
            ok = false;
          }
          expect(ok).toBe(expectOk);
          if (ok) {
            seen.add(s);
            top = Math.max(top, s);
          }
        }
      }),
    );
  });

  it('forget: a forgotten number inside the window is accepted once more, one outside stays refused (model)', () => {
    const op = fc.oneof(
      fc.record({ forget: fc.constant(false), seq: fc.nat({ max: 600 }) }),
      fc.record({ forget: fc.constant(true), seq: fc.nat({ max: 600 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
        const w = new ReplayWindow(64);
        const seen = new Set<number>();
        let top = -1;
        for (const { forget, seq: s } of ops) {
          if (forget) {
            w.forget(s);
            if (s <= top && top - s < 64) seen.delete(s);
            continue;
          }
          const expectOk = !seen.has(s) && (s > top || top - s < 64);
          let ok = true;
          try {
            w.accept(s);
          } catch {
            ok = false;
          }
          expect(ok).toBe(expectOk);
          if (ok) {
            seen.add(s);
            top = Math.max(top, s);
          }
          expect(w.seen(s)).toBe(seen.has(s) && top - s < 64);
        }
      }),
    );
  });

  it('refuses sizes that are not multiples of 32 or out of range', () => {
    expect(() => new ReplayWindow(100)).toThrow(ProtocolError);
    expect(() => new ReplayWindow(16)).toThrow(ProtocolError);
  });
});
