// Commands on end-to-end topics in the envelope (docs/PROTOCOL.md §23.4): the worked vector on both backends, and
// that an e2e-down envelope opens as nothing else, nor anything else as it, under the same key.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  buildAad,
  buildNonce,
  type CryptoBackend,
  type Direction,
  EnvelopeKey,
  encodeHeader,
  nativeBackend,
  openEnvelope,
  portableBackend,
  type SuiteId,
  sealEnvelope,
} from '../../protocol/index.js';
import { hex, loadVectors, toHex } from '../helpers/vectors.js';

interface E2eVector {
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
}
const file = loadVectors<E2eVector>('qkey-e2e-envelope.json');
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');

describe.each<[string, CryptoBackend]>([
  ['native', nativeBackend],
  ['portable', portableBackend],
])('%s backend', (_, backend) => {
  it.each(file.vectors.map((v) => [v.name, v] as const))('%s', (_, v) => {
    const key = new EnvelopeKey(hex(v.key), backend);
    const ctx = { key, deviceId: v.deviceId, topic: v.topic, direction: v.direction };
    expect(toHex(buildNonce(v.direction, v.keyIndex, v.seq))).toBe(v.nonce);
    expect(toHex(buildAad(encodeHeader(v), v.direction, v.deviceId, v.topic))).toBe(v.aad);
    expect(toHex(sealEnvelope(hex(v.payload), { ...ctx, keyIndex: v.keyIndex, seq: v.seq }))).toBe(v.envelope);
    expect(toHex(openEnvelope(hex(v.envelope), ctx).payload)).toBe(v.payload);
  });
});

it('docs/PROTOCOL.md prints every end-to-end vector verbatim', () => {
  for (const v of file.vectors) for (const value of [v.envelope, v.aad, v.nonce]) expect(doc).toContain(value);
});

it('under one key, a command (e2e-down) and the device uplink it shares the key with never open as each other', () => {
  const key = hex('0123456789abcdeffedcba9876543210');
  const topic = 'devices/dev-0001/down/secret/unlock';
  const base = { key, keyIndex: 3, seq: 0, deviceId: 'dev-0001', topic };
  const command = sealEnvelope(new TextEncoder().encode('open'), { ...base, direction: 'e2e-down' });
  const uplink = sealEnvelope(new TextEncoder().encode('open'), { ...base, direction: 'up' });
  expect(toHex(command)).not.toBe(toHex(uplink)); // the nonces differ (direction byte)
  const code = (fn: () => unknown) => {
    try {
      fn();
      return 'OK';
    } catch (err) {
      return (err as { code?: string }).code;
    }
  };
  for (const other of ['up', 'down', 'will', 'app-up', 'app-down'] as const)
    expect(code(() => openEnvelope(command, { ...base, direction: other }))).toBe('PROTO_ERR_TAG');
  expect(code(() => openEnvelope(uplink, { ...base, direction: 'e2e-down' }))).toBe('PROTO_ERR_TAG');
});
