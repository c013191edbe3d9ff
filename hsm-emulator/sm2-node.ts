// What node:crypto (OpenSSL) offers for SM2, found by trying it: a key on the SM2 curve, its signature checked
// against GB/T 32918.2, and SM2 public-key encryption (GB/T 32918.4). bench/sm2.ts and the vector tests use it.
import { createPublicKey, generateKeyPairSync, type KeyObject, publicEncrypt, sign, verify } from 'node:crypto';

/** SubjectPublicKeyInfo prefix of an EC key on the SM2 curve (id-ecPublicKey, 1.2.156.10197.1.301), 65-byte point. */
const SM2_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a811ccf5501822d034200', 'hex');

/** The node:crypto public key for an uncompressed SM2 point (04 || x || y, hex). */
export function nodeSm2PublicKey(pointHex: string): KeyObject {
  return createPublicKey({
    key: Buffer.concat([SM2_SPKI_PREFIX, Buffer.from(pointHex, 'hex')]),
    format: 'der',
    type: 'spki',
  });
}

/** DER SEQUENCE { r, s } of a 64-byte r || s signature (GB/T 32918.2 signature, GM/T 0009 encoding). */
export function derSignature(rs: Uint8Array): Buffer {
  const int = (b: Uint8Array) => {
    let v = Buffer.from(b);
    while (v.length > 1 && v[0] === 0 && v[1]! < 0x80) v = v.subarray(1);
    if (v[0]! >= 0x80) v = Buffer.concat([Buffer.from([0]), v]);
    return Buffer.concat([Buffer.from([0x02, v.length]), v]);
  };
  const body = Buffer.concat([int(rs.subarray(0, 32)), int(rs.subarray(32))]);
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}

export interface NodeSm2Support {
  /** node:crypto makes key pairs on the SM2 curve. */
  curve: boolean;
  /** Its signature on that curve verifies a GB/T 32918.2 signature (with Z_A): false means it is ECDSA, not SM2. */
  signatureIsSm2: boolean;
  /** publicEncrypt works with an SM2 key (GB/T 32918.4). */
  encryption: boolean;
}

/**
 * Tries node:crypto with a GB/T 32918.5 example: `message` signed as `signatureRs` (r || s, default ID) by the key
 * whose point is `publicKeyHex`.
 */
export function nodeSm2Support(publicKeyHex: string, message: Uint8Array, signatureRs: Uint8Array): NodeSm2Support {
  let curve = false;
  try {
    generateKeyPairSync('ec', { namedCurve: 'SM2' });
    curve = true;
  } catch {
    return { curve, signatureIsSm2: false, encryption: false };
  }
  const key = nodeSm2PublicKey(publicKeyHex);
  let signatureIsSm2 = false;
  for (const digest of [null, 'sm3']) {
    try {
      signatureIsSm2 ||= verify(digest, message, key, derSignature(signatureRs));
    } catch {
      // this digest is not accepted with this key type
    }
  }
  let encryption = false;
  try {
    encryption = publicEncrypt(key, Buffer.alloc(16)).length > 16;
  } catch {
    encryption = false;
  }
  return { curve, signatureIsSm2, encryption };
}

/** ECDSA on the SM2 curve through OpenSSL: what node:crypto's "SM2" signing is; for scale in bench/sm2.ts only. */
export function nodeSm2CurveEcdsa(): { sign(m: Uint8Array): Buffer; verify(m: Uint8Array, s: Uint8Array): boolean } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'SM2' });
  return {
    sign: (m) => sign('sm3', m, privateKey),
    verify: (m, s) => verify('sm3', m, publicKey, s),
  };
}
