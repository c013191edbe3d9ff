// The device login proof (docs/PROTOCOL.md §13): worked vector on both backends, and argument checks.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loginProof, nativeBackend, portableBackend, ProtocolError } from '../../protocol/index.js';

const KEY = Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex');
const MAC = 'c96bdd150f9d76a29aabb760badb55537cbff3c97d4dae22ee561bf834151dbc';

describe('loginProof', () => {
  it.each([
    ['native', nativeBackend],
    ['portable', portableBackend],
  ] as const)('matches the worked vector (%s)', (_, backend) => {
    expect(Buffer.from(loginProof(KEY, 'dev-0001', Buffer.alloc(32), backend)).toString('hex')).toBe(MAC);
  });

  it('binds the device id and the challenge', () => {
    expect(Buffer.from(loginProof(KEY, 'dev-0002', Buffer.alloc(32))).toString('hex')).not.toBe(MAC);
    expect(Buffer.from(loginProof(KEY, 'dev-0001', Buffer.alloc(32, 1))).toString('hex')).not.toBe(MAC);
  });

  it('refuses wrong key and challenge lengths and an empty device id', () => {
    expect(() => loginProof(KEY.subarray(1), 'd', Buffer.alloc(32))).toThrow(ProtocolError);
    expect(() => loginProof(KEY, 'd', Buffer.alloc(31))).toThrow(ProtocolError);
    expect(() => loginProof(KEY, '', Buffer.alloc(32))).toThrow(ProtocolError);
  });

  it('is printed in docs/PROTOCOL.md', () => {
    expect(readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8')).toContain(MAC);
  });
});
