// Access tokens (docs/PROTOCOL.md §12): signing, offline verification, and every way a token can be refused.
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signToken, type TokenClaims, TokenError, type TokenErrorCode, verifyToken } from '../../protocol/index.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const other = generateKeyPairSync('ed25519');
const keys = new Map([['k1', publicKey]]);
const NOW = 1_800_000_000;
const claims: TokenClaims = { v: 1, kid: 'k1', sub: 'dev-1', role: 'device', iat: NOW, exp: NOW + 600, jti: 'j1' };

function codeOf(token: string, now = NOW): TokenErrorCode | 'OK' {
  try {
    verifyToken(token, keys, now);
    return 'OK';
  } catch (err) {
    expect(err).toBeInstanceOf(TokenError);
    return (err as TokenError).code;
  }
}

describe('tokens', () => {
  const token = signToken(claims, privateKey);

  it('round-trips claims and tolerates 30 s of clock skew', () => {
    expect(verifyToken(token, keys, NOW)).toEqual(claims);
    expect(codeOf(token, NOW + 600 + 29)).toBe('OK');
    expect(codeOf(token, NOW - 29)).toBe('OK');
  });

  it('refuses expired, future, unknown-key, forged and malformed tokens', () => {
    expect(codeOf(token, NOW + 630)).toBe('TOKEN_ERR_EXPIRED');
    expect(codeOf(token, NOW - 31)).toBe('TOKEN_ERR_NOT_YET_VALID');
    expect(codeOf(signToken({ ...claims, kid: 'k2' }, privateKey))).toBe('TOKEN_ERR_KEY');
    expect(codeOf(signToken(claims, other.privateKey))).toBe('TOKEN_ERR_SIGNATURE');
    const [prefix, body, sig] = token.split('.');
    const elevated = Buffer.from(JSON.stringify({ ...claims, role: 'broker' })).toString('base64url');
    expect(codeOf(`${prefix}.${elevated}.${sig}`)).toBe('TOKEN_ERR_SIGNATURE');
    for (const bad of [
      '',
      'qk1.',
      'qk2.a.b',
      `${prefix}.${body}`,
      `${token}.x`,
      `qk1.${Buffer.from('[]').toString('base64url')}.${sig}`,
      'qk1.!!.!!',
      'x'.repeat(5000),
    ]) {
      expect(codeOf(bad)).toBe('TOKEN_ERR_MALFORMED');
    }
    const noRole = Buffer.from(JSON.stringify({ ...claims, role: 'admin' })).toString('base64url');
    expect(codeOf(`qk1.${noRole}.${sig}`)).toBe('TOKEN_ERR_MALFORMED');
  });
});
