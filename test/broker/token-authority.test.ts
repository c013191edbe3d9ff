// The broker's token authority against a real key service: offline verification, revocation feed, listeners.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { TokenAuthority } from '../../broker/token-authority.js';
import { KmsClient } from '../../kms-api/client.js';
import { loginProof, TokenError, type TokenErrorCode } from '../../protocol/index.js';
import { brokerClient, provisionDevice, removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

let t: TestKms;
let broker: KmsClient;
beforeAll(async () => {
  t = await startTestKms();
  broker = await brokerClient(t);
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

async function deviceToken(deviceId: string, loginKey: Buffer): Promise<string> {
  const { challenge } = await t.anon.challenge(deviceId);
  const mac = Buffer.from(loginProof(loginKey, deviceId, Buffer.from(challenge, 'base64'))).toString('base64');
  return (await t.anon.deviceToken(deviceId, challenge, mac)).access_token;
}

function code(authority: TokenAuthority, token: string): TokenErrorCode | 'OK' {
  try {
    authority.verify(token);
    return 'OK';
  } catch (err) {
    expect(err).toBeInstanceOf(TokenError);
    return (err as TokenError).code;
  }
}

it('verifies offline, refuses garbage and expired tokens, and drops revoked subjects after a feed poll', async () => {
  const dev = await provisionDevice(t.admin, 'dev-ta', 1, 1);
  const token = await deviceToken('dev-ta', dev.loginKey);
  const authority = new TokenAuthority(broker, { pollMs: 60_000 });
  await authority.start();
  try {
    expect(authority.verify(token)).toMatchObject({ sub: 'dev-ta', role: 'device' });
    expect(authority.feedHealthy).toBe(true);
    expect(code(authority, 'qk1.nope.nope')).toBe('TOKEN_ERR_MALFORMED');
    const later = new TokenAuthority(broker, { now: () => Math.floor(Date.now() / 1000) + 3600 });
    await later.refreshKeys();
    expect(code(later, token)).toBe('TOKEN_ERR_EXPIRED');

    const seen: string[] = [];
    authority.onRevoked((subject, role) => seen.push(`${role}:${subject}`));
    await t.admin.revokeDevice('dev-ta');
    await authority.poll();
    expect(seen).toEqual(['device:dev-ta']);
    expect(code(authority, token)).toBe('TOKEN_ERR_REVOKED');
  } finally {
    authority.stop();
  }
});

it('keeps verifying with what it knows when the key service goes away, and says the feed is unhealthy', async () => {
  const dev = await provisionDevice(t.admin, 'dev-ta2', 1, 1);
  const token = await deviceToken('dev-ta2', dev.loginKey);
  const authority = new TokenAuthority(broker);
  await authority.start();
  authority.stop();
  const cut = new TokenAuthority(new KmsClient('http://127.0.0.1:1', { timeoutMs: 500 }));
  await cut.poll();
  expect(cut.feedHealthy).toBe(false);
  // The first authority already holds the keys: verification needs no network.
  (authority as unknown as { kms: KmsClient }).kms = new KmsClient('http://127.0.0.1:1', { timeoutMs: 500 });
  await authority.poll();
  expect(authority.feedHealthy).toBe(false);
  expect(authority.verify(token).sub).toBe('dev-ta2');
});
