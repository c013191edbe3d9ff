// Application session handshake (docs/PROTOCOL.md §22): the signed challenge an application answers with its SM2
// key, and the SM4 session key transported to it under that key. Pure: no I/O, no clock.
//
// SM2 is sm-crypto-v2 (@noble/curves underneath): it passes the GB/T 32918.5 examples and OpenSSL's SM2 vectors and
// makes about 4x sm-crypto's handshakes (bench/sm2.ts, hsm-emulator/sm2.ts's header); node:crypto has no correct
// SM2 signature or encryption. Its nonces and ephemeral keys come from crypto.getRandomValues.
import { sm2 } from 'sm-crypto-v2';
import { abytes, bytesToHex, hexToBytes, utf8Bytes } from './_bytes.js';
import { ArgumentError } from './errors.js';

/** Public keys are uncompressed points, 04 || x || y: 65 bytes, 130 hex digits. */
export const APP_SM2_PUBLIC_KEY_HEX_LENGTH = 130;
/** Signatures are r || s, 32 bytes each. */
export const APP_SM2_SIGNATURE_LENGTH = 64;
/** The signer's distinguishing identifier in Z_A (GB/T 32918.2 §5.5; GM/T 0009-2012's default). */
export const APP_SM2_USER_ID = '1234567812345678';
export const APP_CHALLENGE_LENGTH = 32;
export const APP_SESSION_KEY_LENGTH = 16;
/** C1 (65: 04 || x || y) || C3 (32, SM3) || C2 (16, the key): GB/T 32918.4 §6.1 in the C1C3C2 order. */
export const APP_WRAPPED_KEY_LENGTH = 65 + 32 + APP_SESSION_KEY_LENGTH;
const DOMAIN = 'qkey-mqtt/app-session/v1';
/** §22.6: the topic an application announces each new session key on; the broker forwards it to no one. */
export const APP_SESSION_TOPIC = '$qkey/app-session';

/** The point is lowercase 04 || x || y and lies on the SM2 curve (not the point at infinity). */
export function isAppSm2PublicKey(hex: string): boolean {
  if (!/^04[0-9a-f]{128}$/.test(hex)) return false;
  try {
    return sm2.verifyPublicKey(hex);
  } catch {
    return false; // sm-crypto-v2 throws for a point off the curve
  }
}

export interface ChallengeBinding {
  appId: string;
  /** The key service's KME id and the broker the session key is for: a signature for one is useless at another. */
  kmeId: string;
  brokerId: string;
  challenge: Uint8Array;
  /** Expiry of the challenge, seconds since the epoch. */
  expiresAt: number;
}

function field(out: number[], value: string, name: string): void {
  const bytes = utf8Bytes(value);
  if (bytes.length === 0 || bytes.length > 0xffff) throw new ArgumentError(`${name} must be 1..65535 UTF-8 bytes`);
  out.push(bytes.length >>> 8, bytes.length & 0xff, ...bytes);
}

/**
 * §22.2: the message an application signs:
 * "qkey-mqtt/app-session/v1" || u16 len || app id || u16 len || KME id || u16 len || broker id || challenge (32)
 * || u64 expiry (seconds, big-endian).
 */
export function challengeMessage(b: ChallengeBinding): Uint8Array {
  abytes(b.challenge, 'challenge', APP_CHALLENGE_LENGTH);
  if (!Number.isSafeInteger(b.expiresAt) || b.expiresAt < 0) throw new ArgumentError('expiresAt must be seconds');
  const out: number[] = [...utf8Bytes(DOMAIN)];
  field(out, b.appId, 'appId');
  field(out, b.kmeId, 'kmeId');
  field(out, b.brokerId, 'brokerId');
  out.push(...b.challenge);
  const expiry = new DataView(new ArrayBuffer(8));
  expiry.setBigUint64(0, BigInt(b.expiresAt));
  out.push(...new Uint8Array(expiry.buffer));
  return Uint8Array.from(out);
}

/** GB/T 32918.2 signature with SM3 over Z_A (the default user id) || message. */
export function signChallenge(message: Uint8Array, privateKeyHex: string, publicKeyHex: string): Uint8Array {
  const hex = sm2.doSignature(message, privateKeyHex, { hash: true, publicKey: publicKeyHex, userId: APP_SM2_USER_ID });
  return hexToBytes(hex, 'signature');
}

/** False for a wrong length, a key off the curve or a signature that does not verify. */
export function verifyChallenge(message: Uint8Array, signature: Uint8Array, publicKeyHex: string): boolean {
  if (signature.length !== APP_SM2_SIGNATURE_LENGTH || !isAppSm2PublicKey(publicKeyHex)) return false;
  try {
    return sm2.doVerifySignature(message, bytesToHex(signature), publicKeyHex, {
      hash: true,
      userId: APP_SM2_USER_ID,
    });
  } catch {
    return false;
  }
}

/** GB/T 32918.4 encryption of a session key to the application's public key, C1 || C3 || C2 with C1 = 04 || x || y. */
export function wrapSessionKey(key: Uint8Array, publicKeyHex: string): Uint8Array {
  abytes(key, 'session key', APP_SESSION_KEY_LENGTH);
  if (!isAppSm2PublicKey(publicKeyHex)) throw new ArgumentError('not an SM2 public key');
  return hexToBytes(`04${sm2.doEncrypt(key, publicKeyHex, 1)}`, 'ciphertext');
}

/** The session key, or undefined when C1 is off the curve or C3 does not match (wrong key, damaged ciphertext). */
export function unwrapSessionKey(wrapped: Uint8Array, privateKeyHex: string): Uint8Array | undefined {
  if (wrapped.length !== APP_WRAPPED_KEY_LENGTH || wrapped[0] !== 0x04) return undefined;
  try {
    const out = sm2.doDecrypt(bytesToHex(wrapped.subarray(1)), privateKeyHex, 1, {
      output: 'array',
    });
    return out.length === APP_SESSION_KEY_LENGTH ? Uint8Array.from(out) : undefined;
  } catch {
    return undefined;
  }
}
