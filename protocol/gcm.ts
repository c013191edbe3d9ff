// GCM (NIST SP 800-38D) over any 128-bit block cipher, used with SM4 as RFC 8998 specifies (OpenSSL 3.0 has no SM4-GCM).
import { abytes, clean, equalBytes } from './_bytes.js';
import { counterBlocks, xorStream } from './_ctr.js';
import { Ghash, GhashKey } from './_ghash.js';
import type { BlockCipher } from './backend.js';
import { ProtocolError } from './errors.js';

export const GCM_NONCE_LENGTH = 12;
export const GCM_TAG_LENGTH = 16;
/** SP 800-38D §5.2.1.1: plaintext <= 2^39 - 256 bits; far below, the 32-bit counter cannot wrap. */
export const GCM_MAX_PLAINTEXT = 2 ** 32 * 16 - 32;

/** Per-key GCM state: the block cipher and the GHASH table for H = E_K(0^128), computed once per key. */
export class GcmKey {
  private readonly cipher: BlockCipher;
  private readonly ghashKey: GhashKey;

  constructor(cipher: BlockCipher) {
    this.cipher = cipher;
    // SP 800-38D §7.1 step 1: H = CIPH_K(0^128).
    const h = cipher.encryptBlocks(new Uint8Array(16));
    this.ghashKey = new GhashKey(h);
    clean(h);
  }

  /** Returns ciphertext and 16-byte tag. */
  seal(nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): { ciphertext: Uint8Array; tag: Uint8Array } {
    return sealDetached(this, nonce, aad, plaintext);
  }

  /** Writes ciphertext then tag into `out` at `offset` (saves the envelope a copy). */
  sealInto(out: Uint8Array, offset: number, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): void {
    const n = plaintext.length;
    const stream = this.keystream(nonce, n);
    xorStream(out, offset, plaintext, stream, 16);
    const tag = this.tag(aad, out.subarray(offset, offset + n), stream);
    out.set(tag, offset + n);
    clean(stream);
  }

  /** Verifies the tag in constant time, then decrypts; returns undefined when authentication fails. */
  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array): Uint8Array | undefined {
    abytes(tag, 'tag', GCM_TAG_LENGTH);
    const stream = this.keystream(nonce, ciphertext.length);
    const expected = this.tag(aad, ciphertext, stream);
    // SP 800-38D §7.2 step 8: no plaintext is released unless T = T'.
    if (!equalBytes(expected, tag)) {
      clean(stream);
      return undefined;
    }
    const plaintext = new Uint8Array(ciphertext.length);
    xorStream(plaintext, 0, ciphertext, stream, 16);
    clean(stream);
    return plaintext;
  }

  destroy(): void {
    this.ghashKey.destroy();
  }

  /**
   * E_K(J0) followed by the keystream for `length` bytes, in one call to the block cipher.
   * SP 800-38D §7.1 step 2: J0 = IV || 0^31 || 1 for a 96-bit IV; step 3 encrypts from inc32(J0).
   * Counter blocks are J0, J0+1, ...; `length` <= GCM_MAX_PLAINTEXT keeps the low 32 bits from wrapping,
   * so inc32 and a plain increment agree.
   */
  private keystream(nonce: Uint8Array, length: number): Uint8Array {
    abytes(nonce, 'nonce', GCM_NONCE_LENGTH);
    if (length > GCM_MAX_PLAINTEXT) throw new ProtocolError('PROTO_ERR_TOO_LARGE', 'GCM plaintext limit');
    const counters = counterBlocks(nonce, 1, 1 + Math.ceil(length / 16));
    return this.cipher.encryptBlocks(counters);
  }

  /** SP 800-38D §7.1 steps 5-6: T = MSB_128(GCTR_K(J0, S)) with S = GHASH_H(A || 0^v || C || 0^u || [len(A)]64 || [len(C)]64). */
  private tag(aad: Uint8Array, ciphertext: Uint8Array, stream: Uint8Array): Uint8Array {
    const s = new Ghash(this.ghashKey).update(aad).update(ciphertext).finish(aad.length, ciphertext.length);
    for (let i = 0; i < 16; i++) s[i] = (s[i] as number) ^ (stream[i] as number);
    return s;
  }
}

/** Seals with an AEAD's sealInto and returns ciphertext and tag as two views of one buffer (16-byte tag). */
export function sealDetached(
  aead: { sealInto(out: Uint8Array, offset: number, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): void },
  nonce: Uint8Array,
  aad: Uint8Array,
  plaintext: Uint8Array,
): { ciphertext: Uint8Array; tag: Uint8Array } {
  const out = new Uint8Array(plaintext.length + GCM_TAG_LENGTH);
  aead.sealInto(out, 0, nonce, aad, plaintext);
  return { ciphertext: out.subarray(0, plaintext.length), tag: out.subarray(plaintext.length) };
}
