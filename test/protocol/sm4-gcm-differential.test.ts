// Differential fuzzing of the three SM4-GCM paths: the native addon, the JavaScript GCM over OpenSSL's SM4, and the
// JavaScript GCM over sm-crypto's SM4. Random keys, nonces and AAD; every plaintext length at and around each block
// boundary up to 4 KiB; each must seal the same bytes, open the others' output, and refuse single-bit tampering.
import { randomBytes, randomInt } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { nativeBackend, portableBackend } from '../../protocol/backend.js';
import { GcmKey } from '../../protocol/gcm.js';
import { createAddonGcmKey, sm4GcmAddonStatus } from '../../protocol/sm4-gcm-addon.js';
import type { SuiteKey } from '../../protocol/suites.js';
import { toHex } from '../helpers/vectors.js';

const MAX = 4096;
/** 0..4096 at every block boundary (16n - 1, 16n, 16n + 1), plus a few lengths between. */
const LENGTHS = [
  ...new Set(
    Array.from({ length: MAX / 16 + 1 }, (_, n) => [16 * n - 1, 16 * n, 16 * n + 1])
      .flat()
      .concat([2, 7, 100, 1000, 2049, 4000])
      .filter((n) => n >= 0 && n <= MAX),
  ),
].sort((a, b) => a - b);

type Impl = { name: string; key: (k: Uint8Array) => Pick<SuiteKey, 'seal' | 'open'> };
const IMPLS: Impl[] = [
  { name: 'JavaScript GCM over OpenSSL SM4', key: (k) => new GcmKey(nativeBackend.createBlockCipher(k)) },
  { name: 'JavaScript GCM over sm-crypto SM4', key: (k) => new GcmKey(portableBackend.createBlockCipher(k)) },
];
if (sm4GcmAddonStatus().active) IMPLS.unshift({ name: 'native addon', key: (k) => createAddonGcmKey(k)! });

/** Flips one bit of a copy of `bytes`. */
function flip(bytes: Uint8Array, bit: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  out[bit >> 3]! ^= 1 << (bit & 7);
  return out;
}

describe('SM4-GCM: addon, JavaScript GCM and sm-crypto agree', () => {
  it.runIf(process.arch === 'x64' && process.env.QKEY_SM4GCM_ADDON === undefined)(
    'includes the native addon on x86-64',
    () => expect(IMPLS.map((i) => i.name)).toContain('native addon'),
  );

  it(`seal the same bytes and open each other's output at ${LENGTHS.length} lengths from 0 to ${MAX}`, () => {
    for (const length of LENGTHS) {
      const key = randomBytes(16);
      const nonce = randomBytes(12);
      // AAD lengths cross block boundaries too: 0..64 at random, sometimes longer.
      const aad = randomBytes(randomInt(0, 8) === 0 ? randomInt(0, 600) : randomInt(0, 65));
      const plaintext = randomBytes(length);
      const keys = IMPLS.map((i) => i.key(key));
      const sealed = keys.map((k) => k.seal(nonce, aad, plaintext));
      const at = `length ${length}, aad ${aad.length}, key ${key.toString('hex')}, nonce ${nonce.toString('hex')}`;
      for (let i = 1; i < sealed.length; i++) {
        expect(toHex(sealed[i]!.ciphertext), `${IMPLS[i]!.name}: ${at}`).toBe(toHex(sealed[0]!.ciphertext));
        expect(toHex(sealed[i]!.tag), `${IMPLS[i]!.name}: ${at}`).toBe(toHex(sealed[0]!.tag));
      }
      for (const [i, k] of keys.entries()) {
        const from = sealed[(i + 1) % sealed.length]!;
        const opened = k.open(nonce, aad, from.ciphertext, from.tag);
        expect(opened && Buffer.from(opened).equals(plaintext), `${IMPLS[i]!.name} opens: ${at}`).toBe(true);
      }
    }
  });

  it('every path refuses a single flipped bit in ciphertext, tag, AAD or nonce, at random lengths and bits', () => {
    for (let round = 0; round < 400; round++) {
      const length = LENGTHS[randomInt(0, LENGTHS.length)]!;
      const key = randomBytes(16);
      const nonce = randomBytes(12);
      const aad = randomBytes(randomInt(0, 80));
      const sealed = IMPLS[0]!.key(key).seal(nonce, aad, randomBytes(length));
      const parts: Record<'nonce' | 'aad' | 'ciphertext' | 'tag', Uint8Array> = { nonce, aad, ...sealed };
      const names = (Object.keys(parts) as Array<keyof typeof parts>).filter((n) => parts[n].length > 0);
      const name = names[round % names.length]!;
      const changed = { ...parts, [name]: flip(parts[name], randomInt(0, parts[name].length * 8)) };
      for (const impl of IMPLS) {
        const opened = impl.key(key).open(changed.nonce, changed.aad, changed.ciphertext, changed.tag);
        expect(opened, `${impl.name}: ${name} flipped at length ${length}`).toBeUndefined();
      }
    }
  });

  it('every path refuses each of the 128 single-bit changes of the tag, at the block boundaries around 4 KiB', () => {
    for (const length of [0, 15, 16, 17, MAX - 1, MAX]) {
      const key = randomBytes(16);
      const nonce = randomBytes(12);
      const aad = randomBytes(33);
      const { ciphertext, tag } = IMPLS[0]!.key(key).seal(nonce, aad, randomBytes(length));
      for (const impl of IMPLS) {
        const k = impl.key(key);
        for (let bit = 0; bit < 128; bit++)
          expect(k.open(nonce, aad, ciphertext, flip(tag, bit)), `${impl.name}: tag bit ${bit}`).toBeUndefined();
      }
    }
  });
});
