// The envelope's cipher suites: SM4-GCM (RFC 8998, default) and SM4-CTR with HMAC-SM3 (encrypt-then-MAC).
import { clean, equalBytes } from './_bytes.js';
import { counterBlocks, xorStream } from './_ctr.js';
import type { BlockCipher, CryptoBackend } from './backend.js';
import { ProtocolError } from './errors.js';
import { GcmKey, sealDetached } from './gcm.js';

export const SUITE_SM4_GCM = 0x01;
export const SUITE_SM4_CTR_HMAC_SM3 = 0x02;
export type SuiteId = typeof SUITE_SM4_GCM | typeof SUITE_SM4_CTR_HMAC_SM3;

export const SUITE_NAMES: Readonly<Record<SuiteId, string>> = {
  [SUITE_SM4_GCM]: 'SM4-GCM',
  [SUITE_SM4_CTR_HMAC_SM3]: 'SM4-CTR-HMAC-SM3',
};

/** Both suites use a 12-byte nonce and a 16-byte tag (docs/PROTOCOL.md §4). */
export const TAG_LENGTH = 16;
export const NONCE_LENGTH = 12;

/** One suite bound to one key; holds the per-key state (key schedule, GHASH table, subkeys). */
export interface SuiteKey {
  seal(nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): { ciphertext: Uint8Array; tag: Uint8Array };
  /** As seal, writing ciphertext || tag into `out` at `offset`. */
  sealInto(out: Uint8Array, offset: number, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): void;
  /** Returns undefined when the tag does not verify; never returns unauthenticated plaintext. */
  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array): Uint8Array | undefined;
  destroy(): void;
}

/**
 * The suite a sender uses towards a receiver that declared `supported` (docs/PROTOCOL.md §20): SM4-GCM when the
 * receiver has it or declared nothing, else SM4-CTR-HMAC-SM3. Undefined when the receiver declared no known suite.
 */
export function chooseSuite(supported: readonly number[] | undefined): SuiteId | undefined {
  if (!supported || supported.includes(SUITE_SM4_GCM)) return SUITE_SM4_GCM;
  if (supported.includes(SUITE_SM4_CTR_HMAC_SM3)) return SUITE_SM4_CTR_HMAC_SM3;
  return undefined;
}

export function isSuiteId(id: number): id is SuiteId {
  return id === SUITE_SM4_GCM || id === SUITE_SM4_CTR_HMAC_SM3;
}

export function parseSuite(value: string | number): SuiteId {
  const n = typeof value === 'number' ? value : /^\d+$/.test(value) ? Number(value) : undefined;
  if (n !== undefined && isSuiteId(n)) return n;
  for (const [id, name] of Object.entries(SUITE_NAMES)) {
    if (typeof value === 'string' && name.toLowerCase() === value.toLowerCase()) return Number(id) as SuiteId;
  }
  throw new ProtocolError('PROTO_ERR_SUITE', `unknown suite ${JSON.stringify(String(value))}`);
}

/** SM4-GCM for a raw key: the backend's own (the native addon) when it has one, GCM over its SM4 otherwise. */
export function createSm4Gcm(key: Uint8Array, backend: CryptoBackend): SuiteKey {
  return createSuiteKey(SUITE_SM4_GCM, key, backend, () => backend.createBlockCipher(key));
}

/**
 * One suite's per-key state. `cipher` supplies the key's SM4 block cipher when the suite needs one (a caller
 * holding several suites of one key passes the same cipher to each); a backend's own SM4-GCM needs none.
 */
export function createSuiteKey(
  suite: SuiteId,
  key: Uint8Array,
  backend: CryptoBackend,
  cipher: () => BlockCipher,
): SuiteKey {
  switch (suite) {
    case SUITE_SM4_GCM:
      return backend.createGcm?.(key) ?? new GcmKey(cipher());
    case SUITE_SM4_CTR_HMAC_SM3:
      return new CtrHmacKey(cipher(), backend);
  }
}

/**
 * SM4-CTR + HMAC-SM3, encrypt-then-MAC, for chips without GHASH (docs/PROTOCOL.md §4.2).
 * Subkeys are SM4 encryptions under K of constant blocks 0^15 || i. Those blocks start with 0x00 while every
 * GCM counter block starts with the direction byte (0x01 or 0x02) and H = E_K(0^128) uses i = 0, so the same
 * key used under both suites never yields the same block-cipher output twice.
 */
class CtrHmacKey implements SuiteKey {
  private readonly encCipher: BlockCipher;
  private readonly macKey: Uint8Array;
  private readonly backend: CryptoBackend;

  constructor(cipher: BlockCipher, backend: CryptoBackend) {
    const constants = new Uint8Array(48);
    constants[15] = 1; // K_enc = E_K(0^15 || 01)
    constants[31] = 2; // K_mac = E_K(0^15 || 02) || E_K(0^15 || 03)
    constants[47] = 3;
    const sub = cipher.encryptBlocks(constants);
    this.encCipher = backend.createBlockCipher(sub.subarray(0, 16));
    this.macKey = sub.slice(16, 48);
    clean(sub);
    this.backend = backend;
  }

  seal(nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array) {
    return sealDetached(this, nonce, aad, plaintext);
  }

  sealInto(out: Uint8Array, offset: number, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): void {
    const n = plaintext.length;
    const stream = this.keystream(nonce, n);
    xorStream(out, offset, plaintext, stream, 0);
    clean(stream);
    out.set(this.mac(aad, out.subarray(offset, offset + n)), offset + n);
  }

  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array) {
    // Encrypt-then-MAC: the tag is checked, in constant time, before any decryption happens.
    if (!equalBytes(this.mac(aad, ciphertext), tag)) return undefined;
    const stream = this.keystream(nonce, ciphertext.length);
    const plaintext = new Uint8Array(ciphertext.length);
    xorStream(plaintext, 0, ciphertext, stream, 0);
    clean(stream);
    return plaintext;
  }

  destroy(): void {
    clean(this.macKey);
  }

  /** Tag = first 16 bytes of HMAC-SM3(K_mac, AAD || C); AAD is self-delimiting, so the input is unambiguous. */
  private mac(aad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    const input = new Uint8Array(aad.length + ciphertext.length);
    input.set(aad);
    input.set(ciphertext, aad.length);
    return this.backend.hmacSm3(this.macKey, input).slice(0, TAG_LENGTH);
  }

  /** Counter blocks nonce || ctr32 with ctr32 = 1, 2, ... big-endian, encrypted under K_enc. */
  private keystream(nonce: Uint8Array, length: number): Uint8Array {
    const counters = counterBlocks(nonce, 1, Math.ceil(length / 16));
    return this.encCipher.encryptBlocks(counters);
  }
}
