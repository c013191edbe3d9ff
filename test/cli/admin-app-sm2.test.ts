// `qkey admin app add --sm2-public-key` through the callable CLI against a real key service: the key is registered
// with the app; a malformed or off-curve key is a usage error caught before the key service is asked.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { sm2KeyPair } from '../../hsm-emulator/sm2.js';
import { runQkey } from '../helpers/cli.js';
import { removeDir, startTestKms, type TestKms } from '../helpers/kms.js';

let t: TestKms;
const admin = (...argv: string[]) => runQkey('admin', '--kms', t.url, '--token', 'test-admin-token', ...argv);

beforeAll(async () => {
  t = await startTestKms();
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

it('registers an app with its SM2 public key; refuses off-curve and malformed keys before asking', async () => {
  const { publicKey } = sm2KeyPair();
  const r = await admin('app', 'add', 'dash', '--sm2-public-key', publicKey.toUpperCase());
  expect(r.code).toBe(0);
  const apps = await t.admin.listClients('app');
  expect(apps.find((a) => a.client_id === 'dash')?.sm2_public_key).toBe(publicKey);
  const offCurve = `${publicKey.slice(0, -2)}${publicKey.endsWith('00') ? '01' : '00'}`;
  for (const bad of [offCurve, publicKey.slice(2), `${publicKey}00`, 'zz']) {
    const refused = await admin('app', 'add', 'other', '--sm2-public-key', bad);
    expect(refused.code).toBe(2);
    expect(refused.err).toMatch(/--sm2-public-key must be an SM2 point/);
  }
  expect((await t.admin.listClients('app')).map((a) => a.client_id)).toEqual(['dash']);
});
