// bench/sm2: SM2 handshakes per second for application sessions (a challenge signature, its verification, and a
// 16-byte SM4 session key encrypted to the client's SM2 key and decrypted by it), with sm-crypto (through
// hsm-emulator/sm2.ts) and with sm-crypto-v2 (the same API on @noble/curves, a candidate), beside what node:crypto
// (OpenSSL) offers on the SM2 curve, measured in the same run. Run: npm run bench:sm2
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { sm2Decrypt, sm2Encrypt, sm2KeyPair, sm2Sign, sm2Verify } from '../hsm-emulator/sm2.js';
import { nodeSm2CurveEcdsa, nodeSm2Support } from '../hsm-emulator/sm2-node.js';
import { sm2 as sm2v2 } from 'sm-crypto-v2';
import { formatRate, measureInterleaved, table } from './_measure.js';

const ROUNDS = 5;
const MS = 300;

// The GB/T 32918.5 signature example decides whether node:crypto's SM2 is SM2 at all.
const vectors = JSON.parse(
  readFileSync(new URL('../../test/vectors/sm2-recommended-curve.json', import.meta.url), 'utf8'),
) as { vectors: Array<{ kind: string; public_key?: string; message?: string; signature?: string }> };
const example = vectors.vectors.find((v) => v.kind === 'sign')!;
const support = nodeSm2Support(
  example.public_key!,
  Buffer.from(example.message!, 'hex'),
  Buffer.from(example.signature!, 'hex'),
);

const client = sm2KeyPair();
const challenge = randomBytes(32);
const sessionKey = randomBytes(16);
const signature = sm2Sign(challenge, client);
const wrapped = sm2Encrypt(sessionKey, client.publicKey);
const v2Signature = sm2v2.doSignature(challenge, client.privateKey, { hash: true, publicKey: client.publicKey });
const v2Wrapped = sm2v2.doEncrypt(sessionKey, client.publicKey, 1);
const ecdsa = support.curve ? nodeSm2CurveEcdsa() : undefined;
const ecdsaSignature = ecdsa?.sign(challenge);

const cases = [
  { name: 'sm-crypto sign', run: () => sm2Sign(challenge, client) },
  { name: 'sm-crypto verify', run: () => sm2Verify(challenge, signature, client.publicKey) },
  { name: 'sm-crypto encrypt 16 B', run: () => sm2Encrypt(sessionKey, client.publicKey) },
  { name: 'sm-crypto decrypt 16 B', run: () => sm2Decrypt(wrapped, client.privateKey) },
  {
    name: 'sm-crypto-v2 sign',
    run: () => sm2v2.doSignature(challenge, client.privateKey, { hash: true, publicKey: client.publicKey }),
  },
  { name: 'sm-crypto-v2 verify', run: () => sm2v2.doVerifySignature(challenge, v2Signature, client.publicKey) },
  { name: 'sm-crypto-v2 encrypt 16 B', run: () => sm2v2.doEncrypt(sessionKey, client.publicKey, 1) },
  {
    name: 'sm-crypto-v2 decrypt 16 B',
    run: () => sm2v2.doDecrypt(v2Wrapped, client.privateKey, 1, { output: 'array' }),
  },
  ...(ecdsa
    ? [
        { name: 'node:crypto ECDSA-SM3 on SM2 curve sign', run: () => ecdsa.sign(challenge) },
        { name: 'node:crypto ECDSA-SM3 on SM2 curve verify', run: () => ecdsa.verify(challenge, ecdsaSignature!) },
      ]
    : []),
];
const rates = measureInterleaved(cases, ROUNDS, MS);
const r = (name: string) => rates.get(name)!;
const perHandshake = (names: string[]) => 1 / names.reduce((t, n) => t + 1 / r(n), 0);
const smHandshake = perHandshake([
  'sm-crypto sign',
  'sm-crypto verify',
  'sm-crypto encrypt 16 B',
  'sm-crypto decrypt 16 B',
]);
const v2Handshake = perHandshake([
  'sm-crypto-v2 sign',
  'sm-crypto-v2 verify',
  'sm-crypto-v2 encrypt 16 B',
  'sm-crypto-v2 decrypt 16 B',
]);

console.log(`SM2, ${ROUNDS} interleaved rounds of ${MS} ms per case, median (one core)\n`);
const base = r('sm-crypto sign');
console.log(
  table([
    ['operation', 'rate', 'vs sm-crypto sign'],
    ...cases.map((c) => [c.name, formatRate(r(c.name)), `${(r(c.name) / base).toFixed(2)}x`]),
    [
      'handshake (sign + verify + encrypt + decrypt), sm-crypto',
      formatRate(smHandshake),
      `${(smHandshake / base).toFixed(2)}x`,
    ],
    [
      'handshake (sign + verify + encrypt + decrypt), sm-crypto-v2',
      formatRate(v2Handshake),
      `${(v2Handshake / base).toFixed(2)}x`,
    ],
  ]),
);
console.log(`
node:crypto (OpenSSL ${process.versions.openssl}) on SM2:
  key pairs on the SM2 curve:                ${support.curve ? 'yes' : 'no'}
  signature verifies as GB/T 32918.2 (Z_A):  ${support.signatureIsSm2 ? 'yes' : 'no: it signs ECDSA on the SM2 curve'}
  SM2 public-key encryption (publicEncrypt): ${support.encryption ? 'yes' : 'no: not supported for this key type'}
sm-crypto-v2 makes ${(v2Handshake / smHandshake).toFixed(1)}x as many handshakes as sm-crypto (test/hsm-emulator/sm2-vectors
checks both against the same known answers).
=> ${
  support.signatureIsSm2 && support.encryption
    ? 'node:crypto has a correct SM2: compare its handshake rate above before choosing.'
    : 'node:crypto has no correct SM2; its rows are for scale, not an alternative.'
}`);
