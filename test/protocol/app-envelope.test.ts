// Application traffic in the envelope (docs/PROTOCOL.md §22.5): the worked vectors on both backends, and that device
// and application envelopes, directions and application ids never stand in for one another.
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

interface AppVector {
  name: string;
  key: string;
  suite: SuiteId;
  keyIndex: number;
  seq: number;
  appId: string;
  topic: string;
  direction: Direction;
  payload: string;
  nonce: string;
  aad: string;
  envelope: string;
}
const file = loadVectors<AppVector>('qkey-app-envelope.json');
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');

describe.each<[string, CryptoBackend]>([
  ['native', nativeBackend],
  ['portable', portableBackend],
])('%s backend', (_, backend) => {
  it.each(file.vectors.map((v) => [v.name, v] as const))('%s', (_, v) => {
    const key = new EnvelopeKey(hex(v.key), backend);
    const ctx = { key, deviceId: v.appId, topic: v.topic, direction: v.direction };
    expect(toHex(buildNonce(v.direction, v.keyIndex, v.seq))).toBe(v.nonce);
    expect(toHex(buildAad(encodeHeader(v), v.direction, v.appId, v.topic))).toBe(v.aad);
    expect(toHex(sealEnvelope(hex(v.payload), { ...ctx, keyIndex: v.keyIndex, seq: v.seq }))).toBe(v.envelope);
    expect(toHex(openEnvelope(hex(v.envelope), ctx).payload)).toBe(v.payload);
  });
});

it('docs/PROTOCOL.md prints every application vector verbatim', () => {
  for (const v of file.vectors) for (const value of [v.envelope, v.aad, v.nonce]) expect(doc).toContain(value);
});

describe('no envelope stands in for another kind', () => {
  const key = hex('0123456789abcdeffedcba9876543210');
  const topic = 'devices/dev-0001/up/telemetry';
  const payload = new TextEncoder().encode('{"t":21.5}');
  const open = (envelope: Uint8Array, direction: Direction, id: string) => () =>
    openEnvelope(envelope, { key, deviceId: id, topic, direction });

  it.each<[Direction, Direction]>([
    ['up', 'app-up'],
    ['app-up', 'up'],
    ['down', 'app-down'],
    ['app-down', 'down'],
    ['app-up', 'app-down'],
    ['app-down', 'app-up'],
    ['will', 'app-up'],
  ])('an envelope sealed %s does not open as %s, even with the same key, id, topic, index and seq', (from, to) => {
    const sealed = sealEnvelope(payload, { key, deviceId: 'dashboard', topic, direction: from, keyIndex: 0, seq: 0 });
    expect(toHex(open(sealed, from, 'dashboard')().payload)).toBe(toHex(payload));
    expect(open(sealed, to, 'dashboard')).toThrow(expect.objectContaining({ code: 'PROTO_ERR_TAG' }));
  });

  it("an application's envelope does not open for another application id", () => {
    const sealed = sealEnvelope(payload, {
      key,
      deviceId: 'dashboard',
      topic,
      direction: 'app-up',
      keyIndex: 0,
      seq: 0,
    });
    expect(open(sealed, 'app-up', 'dashboarc')).toThrow(expect.objectContaining({ code: 'PROTO_ERR_TAG' }));
  });

  it('refuses an unknown direction', () => {
    expect(() =>
      sealEnvelope(payload, { key, deviceId: 'a', topic, direction: 'sideways' as Direction, keyIndex: 0, seq: 0 }),
    ).toThrow(/direction must be/);
  });
});
