// SM2 on the recommended curve against known answers (test/vectors/sm2-recommended-curve.json): sm-crypto, which the
// project uses, through hsm-emulator/sm2.ts where it can be; and what node:crypto offers instead, checked so that
// the choice justified in hsm-emulator/sm2.ts and bench/sm2.ts is noticed when a Node release changes it.
import { BigInteger } from 'jsbn';
import smCrypto from 'sm-crypto';
import { sm2 as sm2v2 } from 'sm-crypto-v2';
import { describe, expect, it } from 'vitest';
import { isSm2PublicKey, SM2_DEFAULT_ID, sm2Decrypt, sm2Encrypt, sm2Verify } from '../../hsm-emulator/sm2.js';
import { derSignature, nodeSm2Support } from '../../hsm-emulator/sm2-node.js';
import { loadVectors } from '../helpers/vectors.js';

interface Sm2Vector {
  name: string;
  kind: 'sign' | 'decrypt' | 'verify-digest' | 'decrypt-der';
  private_key?: string;
  public_key?: string;
  user_id?: string;
  message?: string;
  k?: string;
  signature?: string;
  plaintext?: string;
  ciphertext?: string;
  digest?: string;
  signature_der?: string;
  ciphertext_der?: string;
}

const file = loadVectors<Sm2Vector>('sm2-recommended-curve.json');
const of = (kind: Sm2Vector['kind']) => file.vectors.filter((v) => v.kind === kind);
const hex = (h: string) => Buffer.from(h, 'hex');

/** The DER elements of a SEQUENCE (short or one-byte long lengths), as GM/T 0009 encodes SM2 values. */
function derParts(der: Buffer): Buffer[] {
  let i = der[1]! & 0x80 ? 2 + (der[1]! & 0x7f) : 2;
  const parts: Buffer[] = [];
  while (i < der.length) {
    const len = der[i + 1]!;
    parts.push(der.subarray(i + 2, i + 2 + len));
    i += 2 + len;
  }
  return parts;
}
const scalar = (b: Buffer) =>
  b
    .subarray(b.length - 32)
    .toString('hex')
    .padStart(64, '0');

describe('SM2 known answers on the recommended curve', () => {
  it('the origin of the vectors is recorded', () => expect(file.origin).toMatch(/GB\/T 32918\.5/));

  it.each(of('sign'))('$name: sm-crypto signs with the given k exactly; sm2Verify accepts it', (v) => {
    expect(sm2KeyMatches(v.private_key!, v.public_key!)).toBe(true);
    const kG = smCrypto.sm2.getPublicKeyFromPrivateKey(v.k!);
    const pointPool = [{ k: new BigInteger(v.k!, 16), x1: new BigInteger(kG.slice(2, 66), 16) }];
    const sig = smCrypto.sm2.doSignature(Array.from(hex(v.message!)), v.private_key!, {
      hash: true,
      publicKey: v.public_key!,
      pointPool,
      userId: v.user_id!,
    });
    expect(sig).toBe(v.signature);
    expect(v.user_id).toBe(SM2_DEFAULT_ID);
    expect(sm2Verify(hex(v.message!), hex(v.signature!), v.public_key!)).toBe(true);
    const bad = hex(v.signature!);
    bad[63]! ^= 1;
    expect(sm2Verify(hex(v.message!), bad, v.public_key!)).toBe(false);
  });

  it.each(of('decrypt'))('$name: sm2Decrypt recovers the plaintext; C1 is kG', (v) => {
    expect(sm2Decrypt(hex(v.ciphertext!), v.private_key!)?.toString('hex')).toBe(v.plaintext);
    expect(v.ciphertext!.slice(2, 130)).toBe(smCrypto.sm2.getPublicKeyFromPrivateKey(v.k!).slice(2));
    const damaged = hex(v.ciphertext!);
    damaged[damaged.length - 1]! ^= 1;
    expect(sm2Decrypt(damaged, v.private_key!)).toBeUndefined();
    // And a fresh encryption of the same plaintext under the same key round-trips.
    expect(sm2Decrypt(sm2Encrypt(hex(v.plaintext!), v.public_key!), v.private_key!)?.toString('hex')).toBe(v.plaintext);
  });

  it.each(of('verify-digest'))('$name: sm-crypto verifies the signature over the given e', (v) => {
    expect(isSm2PublicKey(v.public_key!)).toBe(true);
    const [r, s] = derParts(hex(v.signature_der!));
    const rs = scalar(r!) + scalar(s!);
    expect(
      smCrypto.sm2.doVerifySignature(Array.from(hex(v.digest!)), rs, v.public_key!, {
        hash: false,
        userId: SM2_DEFAULT_ID,
      }),
    ).toBe(true);
    const other = hex(v.digest!);
    other[0]! ^= 1;
    expect(
      smCrypto.sm2.doVerifySignature(Array.from(other), rs, v.public_key!, { hash: false, userId: SM2_DEFAULT_ID }),
    ).toBe(false);
  });

  it.each(of('decrypt-der'))('$name: re-encoded as C1 || C3 || C2, sm2Decrypt recovers the plaintext', (v) => {
    const [x, y, c3, c2] = derParts(hex(v.ciphertext_der!));
    const c1c3c2 = Buffer.concat([Buffer.from([4]), hex(scalar(x!)), hex(scalar(y!)), c3!, c2!]);
    expect(sm2Decrypt(c1c3c2, v.private_key!)?.toString('hex')).toBe(v.plaintext);
  });
});

describe('sm-crypto-v2 (measured in bench/sm2.ts) on the same known answers', () => {
  it.each(of('sign'))('$name: signs with the given k exactly and verifies', (v) => {
    const kG = sm2v2.getPublicKeyFromPrivateKey(v.k!);
    const pointPool = [{ k: BigInt(`0x${v.k!}`), x1: BigInt(`0x${kG.slice(2, 66)}`) }];
    const options = { hash: true, publicKey: v.public_key!, pointPool, userId: v.user_id! };
    expect(sm2v2.doSignature(hex(v.message!), v.private_key!, options)).toBe(v.signature);
    expect(sm2v2.doVerifySignature(hex(v.message!), v.signature!, v.public_key!, { hash: true })).toBe(true);
  });

  it.each(of('decrypt'))("$name: decrypts; sm-crypto and sm-crypto-v2 open each other's ciphertexts", (v) => {
    const plain = sm2v2.doDecrypt(v.ciphertext!.slice(2), v.private_key!, 1, { output: 'array' });
    expect(Buffer.from(plain).toString('hex')).toBe(v.plaintext);
    const fromV2 = Buffer.from(`04${sm2v2.doEncrypt(hex(v.plaintext!), v.public_key!, 1)}`, 'hex');
    expect(sm2Decrypt(fromV2, v.private_key!)?.toString('hex')).toBe(v.plaintext);
    const fromV1 = sm2Encrypt(hex(v.plaintext!), v.public_key!);
    const back = sm2v2.doDecrypt(fromV1.subarray(1).toString('hex'), v.private_key!, 1, { output: 'array' });
    expect(Buffer.from(back).toString('hex')).toBe(v.plaintext);
  });
});

function sm2KeyMatches(privateKey: string, publicKey: string): boolean {
  return smCrypto.sm2.getPublicKeyFromPrivateKey(privateKey) === publicKey;
}

describe('node:crypto and SM2 (why the project uses sm-crypto for SM2)', () => {
  it('has the SM2 curve, but its signature is not GB/T 32918.2 and it cannot SM2-encrypt', () => {
    const v = of('sign')[0]!;
    const support = nodeSm2Support(v.public_key!, hex(v.message!), hex(v.signature!));
    // If this fails, a Node release changed its SM2: measure it with `npm run bench:sm2` and revisit the choice.
    expect(support).toEqual({ curve: true, signatureIsSm2: false, encryption: false });
  });

  it('the DER encoding used for that check is the one GM/T 0009 specifies (OpenSSL vector round trip)', () => {
    const v = of('verify-digest')[0]!;
    const [r, s] = derParts(hex(v.signature_der!));
    expect(derSignature(hex(scalar(r!) + scalar(s!))).toString('hex')).toBe(v.signature_der);
  });
});
