// Checks the worked envelope vectors printed in docs/PROTOCOL.md §10, field by field, on both backends.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  buildAad,
  buildNonce,
  type CryptoBackend,
  type Direction,
  EnvelopeKey,
  encodeHeader,
  isValidDeviceId,
  keyIdFor,
  nativeBackend,
  openEnvelope,
  portableBackend,
  type SuiteId,
  sealEnvelope,
} from '../../protocol/index.js';
import { hex, loadVectors, toHex } from '../helpers/vectors.js';

interface Worked {
  name: string;
  key: string;
  suite: SuiteId;
  keyIndex: number;
  seq: number;
  deviceId: string;
  topic: string;
  direction: Direction;
  payload: string;
  nonce: string;
  aad: string;
  envelope: string;
  keyId: string;
  h?: string;
  kEnc?: string;
  kMac?: string;
}
const file = loadVectors<Worked>('qkey-envelope.json');
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');

describe.each<[string, CryptoBackend]>([
  ['native', nativeBackend],
  ['portable', portableBackend],
])('%s backend', (_, backend) => {
  it.each(file.vectors.map((v) => [v.name, v] as const))('%s', (_, v) => {
    expect(isValidDeviceId(v.deviceId)).toBe(true); // §14: vectors a device can really have
    const key = new EnvelopeKey(hex(v.key), backend);
    const header = encodeHeader(v);
    expect(toHex(buildNonce(v.direction, v.keyIndex, v.seq))).toBe(v.nonce);
    expect(toHex(buildAad(header, v.direction, v.deviceId, v.topic))).toBe(v.aad);
    expect(toHex(sealEnvelope(hex(v.payload), { ...v, key }))).toBe(v.envelope);
    expect(toHex(openEnvelope(hex(v.envelope), { ...v, key }).payload)).toBe(v.payload);
    expect(keyIdFor(v.deviceId, v.keyIndex, backend)).toBe(v.keyId);
    const cipher = backend.createBlockCipher(hex(v.key));
    if (v.h) expect(toHex(cipher.encryptBlocks(new Uint8Array(16)))).toBe(v.h);
    if (v.kEnc && v.kMac) {
      const c = new Uint8Array(48);
      c[15] = 1;
      c[31] = 2;
      c[47] = 3;
      expect(toHex(cipher.encryptBlocks(c))).toBe(v.kEnc + v.kMac);
    }
  });
});

it('docs/PROTOCOL.md prints every worked vector verbatim', () => {
  for (const v of file.vectors) {
    for (const value of [v.envelope, v.aad, v.nonce, v.keyId]) expect(doc).toContain(value);
  }
});
