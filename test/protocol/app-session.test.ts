// The application handshake's SM2 pieces: the GB/T 32918.5 example verifies and decrypts through them, sm-crypto
// (the other implementation) agrees, the signed message binds each field, and malformed input is refused.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { sm2Decrypt, sm2Encrypt, sm2KeyPair, sm2Verify } from '../../hsm-emulator/sm2.js';
import {
  APP_WRAPPED_KEY_LENGTH,
  challengeMessage,
  isAppSm2PublicKey,
  signChallenge,
  unwrapSessionKey,
  verifyChallenge,
  wrapSessionKey,
} from '../../protocol/index.js';

const vectors = JSON.parse(readFileSync(new URL('../vectors/sm2-recommended-curve.json', import.meta.url), 'utf8')) as {
  vectors: Array<Record<string, string>>;
};
const sign = vectors.vectors.find((v) => v.kind === 'sign')!;
const decrypt = vectors.vectors.find((v) => v.kind === 'decrypt')!;

const binding = {
  appId: 'dashboard',
  kmeId: 'kme-1',
  brokerId: 'broker-1',
  challenge: new Uint8Array(32).fill(9),
  expiresAt: 1_800_000_000,
};

describe('app session SM2', () => {
  it('verifies the GB/T 32918.5 signature example (default user id)', () => {
    const msg = Buffer.from(sign.message!, 'hex');
    expect(verifyChallenge(msg, Buffer.from(sign.signature!, 'hex'), sign.public_key!)).toBe(true);
    const flipped = Buffer.from(sign.signature!, 'hex');
    flipped[10]! ^= 1;
    expect(verifyChallenge(msg, flipped, sign.public_key!)).toBe(false);
  });

  it('decrypts the GB/T 32918.5 encryption example only at its 16-byte size bound, so unwrap refuses it', () => {
    // The example's plaintext is 19 bytes: a session key is exactly 16, so the example ciphertext is refused whole.
    expect(unwrapSessionKey(Buffer.from(decrypt.ciphertext!, 'hex'), decrypt.private_key!)).toBeUndefined();
  });

  it('agrees with sm-crypto both ways (signature and C1C3C2 encryption)', () => {
    const kp = sm2KeyPair();
    const msg = challengeMessage(binding);
    expect(sm2Verify(msg, signChallenge(msg, kp.privateKey, kp.publicKey), kp.publicKey)).toBe(true);
    const key = new Uint8Array(16).fill(5);
    const wrapped = wrapSessionKey(key, kp.publicKey);
    expect(wrapped.length).toBe(APP_WRAPPED_KEY_LENGTH);
    expect(Buffer.from(sm2Decrypt(wrapped, kp.privateKey)!)).toEqual(Buffer.from(key));
    expect(Buffer.from(unwrapSessionKey(sm2Encrypt(key, kp.publicKey), kp.privateKey)!)).toEqual(Buffer.from(key));
  });

  it('binds app id, KME id, broker id, challenge and expiry', () => {
    const kp = sm2KeyPair();
    const sig = signChallenge(challengeMessage(binding), kp.privateKey, kp.publicKey);
    expect(verifyChallenge(challengeMessage(binding), sig, kp.publicKey)).toBe(true);
    for (const change of [
      { appId: 'other' },
      { kmeId: 'kme-2' },
      { brokerId: 'broker-2' },
      { challenge: new Uint8Array(32).fill(8) },
      { expiresAt: binding.expiresAt + 1 },
    ])
      expect(verifyChallenge(challengeMessage({ ...binding, ...change }), sig, kp.publicKey)).toBe(false);
    // Length prefixes keep field boundaries: moving a character from one id to the next changes the message.
    expect(challengeMessage({ ...binding, appId: 'dashboardk', kmeId: 'me-1' })).not.toEqual(challengeMessage(binding));
  });

  it('refuses another key, malformed keys and signatures, and damaged ciphertexts', () => {
    const a = sm2KeyPair();
    const b = sm2KeyPair();
    const msg = challengeMessage(binding);
    expect(verifyChallenge(msg, signChallenge(msg, b.privateKey, b.publicKey), a.publicKey)).toBe(false);
    expect(verifyChallenge(msg, new Uint8Array(63), a.publicKey)).toBe(false);
    expect(isAppSm2PublicKey(a.publicKey)).toBe(true);
    expect(isAppSm2PublicKey(a.publicKey.toUpperCase())).toBe(false);
    expect(isAppSm2PublicKey(`04${'0'.repeat(128)}`)).toBe(false);
    expect(isAppSm2PublicKey(`${a.publicKey.slice(0, -2)}${a.publicKey.endsWith('00') ? '01' : '00'}`)).toBe(false);
    expect(isAppSm2PublicKey(`${a.publicKey}00`)).toBe(false);
    expect(isAppSm2PublicKey(`02${a.publicKey.slice(2, 66)}`)).toBe(false);
    const wrapped = wrapSessionKey(new Uint8Array(16), a.publicKey);
    expect(unwrapSessionKey(wrapped, b.privateKey)).toBeUndefined();
    const damaged = Uint8Array.from(wrapped);
    damaged[damaged.length - 1]! ^= 1;
    expect(unwrapSessionKey(damaged, a.privateKey)).toBeUndefined();
    expect(unwrapSessionKey(wrapped.subarray(0, -1), a.privateKey)).toBeUndefined();
    expect(() => wrapSessionKey(new Uint8Array(16), `04${'0'.repeat(128)}`)).toThrow();
    expect(() => challengeMessage({ ...binding, challenge: new Uint8Array(31) })).toThrow();
  });
});
