// SM2 (GB/T 32918) for the factory batch format: key pairs, signatures and public-key encryption via sm-crypto,
// with every secret scalar (private keys, signature nonces) drawn from node:crypto rather than sm-crypto's RNG.
//
// SM2 chosen by measurement (`npm run bench:sm2`; test/hsm-emulator/sm2-vectors.test.ts checks each candidate):
// - node:crypto (OpenSSL, Node 22 and 24) makes keys on the SM2 curve, but crypto.sign on them is ECDSA, not the
//   GB/T 32918.2 signature (it does not verify the GB/T 32918.5 example), and publicEncrypt refuses SM2 keys (no
//   GB/T 32918.4). It is not a correct SM2, however fast (its ECDSA runs about 30x sm-crypto's signatures).
// - sm-crypto passes the GB/T 32918.5 examples and OpenSSL's SM2 vectors, and is slow: on the development machine
//   about 30-40 signatures, 20 verifications, 15-25 encryptions and 45-60 decryptions a second per core, so about
//   6-8 handshakes (sign + verify + encrypt + decrypt of a 16-byte key) a second.
// - sm-crypto-v2 (the same API over @noble/curves) passes the same vectors, opens sm-crypto's ciphertexts and
//   verifies its signatures, and makes about 4x as many handshakes (about 25 a second: 660 signatures, 75
//   verifications, 75 encryptions, 85 decryptions).
// Factory batches, signed and sealed once per fill, keep sm-crypto here: their rate does not matter. Code that runs
// SM2 per application session should use sm-crypto-v2 (a dev dependency for the bench today; a runtime one then).

import { randomBytes } from 'node:crypto';
import { BigInteger } from 'jsbn';
import smCrypto from 'sm-crypto';

const { sm2 } = smCrypto;
/** Public keys are uncompressed points: 04 || x || y, 65 bytes. */
export const SM2_PUBLIC_KEY_LENGTH = 65;
/** Signatures are r || s, 32 bytes each. */
export const SM2_SIGNATURE_LENGTH = 64;
/** The signer's distinguishing identifier (GM/T 0009-2012 default) that enters Z_A. */
export const SM2_DEFAULT_ID = '1234567812345678';

export interface Sm2KeyPair {
  /** Private scalar d, 32 bytes, hex. */
  privateKey: string;
  /** Public point 04 || x || y, 65 bytes, hex. */
  publicKey: string;
}

/**
 * d = r mod (n - 1) + 1 and P = dG, with r 320 random bits from the OS CSPRNG (64 bits beyond n make the modulo
 * bias negligible); sm-crypto does the reduction and the point multiplication.
 */
function randomPoint(): Sm2KeyPair {
  return sm2.generateKeyPairHex(randomBytes(40).toString('hex'), 16);
}

export function sm2KeyPair(): Sm2KeyPair {
  return randomPoint();
}

export function isSm2PublicKey(hex: string): boolean {
  return /^04[0-9a-f]{128}$/.test(hex) && sm2.verifyPublicKey(hex);
}

/** SM2 signature (GB/T 32918.2) with SM3 and Z_A over the default ID; the nonce k comes from node:crypto. */
export function sm2Sign(message: Uint8Array, key: Sm2KeyPair): Buffer {
  // One nonce point: sm-crypto draws another (from its own generator) only if r = 0 or r + k = n, probability ~2^-255.
  const kG = randomPoint();
  const pointPool = [{ k: new BigInteger(kG.privateKey, 16), x1: new BigInteger(kG.publicKey.slice(2, 66), 16) }];
  const signature = sm2.doSignature(Array.from(message), key.privateKey, {
    hash: true,
    publicKey: key.publicKey,
    pointPool,
    userId: SM2_DEFAULT_ID,
  });
  return Buffer.from(signature, 'hex');
}

export function sm2Verify(message: Uint8Array, signature: Uint8Array, publicKeyHex: string): boolean {
  if (signature.length !== SM2_SIGNATURE_LENGTH || !isSm2PublicKey(publicKeyHex)) return false;
  return sm2.doVerifySignature(Array.from(message), Buffer.from(signature).toString('hex'), publicKeyHex, {
    hash: true,
    userId: SM2_DEFAULT_ID,
  });
}

/**
 * SM2 public-key encryption (GB/T 32918.4), output C1 || C3 || C2 with C1 = 04 || x || y. sm-crypto draws the
 * ephemeral k from its own seeded generator; k never meets a long-term secret, so the chip's key is not exposed by it.
 */
export function sm2Encrypt(message: Uint8Array, publicKeyHex: string): Buffer {
  const out = sm2.doEncrypt(Array.from(message), publicKeyHex, 1);
  return Buffer.from(`04${out}`, 'hex');
}

/** Returns undefined when C1 is not on the curve or C3 does not match (a wrong key or a damaged ciphertext). */
export function sm2Decrypt(ciphertext: Uint8Array, privateKeyHex: string): Buffer | undefined {
  const c = Buffer.from(ciphertext);
  if (c.length < 1 + 64 + 32 + 1 || c[0] !== 0x04) return undefined;
  const out = sm2.doDecrypt(c.subarray(1).toString('hex'), privateKeyHex, 1, { output: 'array' });
  return out.length === c.length - 97 ? Buffer.from(out) : undefined;
}
