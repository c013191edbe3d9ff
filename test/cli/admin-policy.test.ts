// `qkey admin policy` through the callable CLI against a real key service: set, list, show, delete, and usage
// errors caught before the key service is asked.
import { afterAll, beforeAll, expect, it } from 'vitest';
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

it('set, list, show and delete an entry; the version moves with each change', async () => {
  const set = await admin(
    'policy',
    'set',
    'uplink-limits',
    '--role',
    'device',
    '--filter',
    'devices/+/up/#',
    '--encryption',
    'required',
    '--suites',
    'SM4-GCM,2',
    '--max-payload',
    '4096',
    '--max-qos',
    '1',
    '--retain',
    'no',
    '--rotate-messages',
    '500',
  );
  expect(set).toMatchObject({ code: 0, out: 'set policy uplink-limits; the table is now at version 1' });
  expect(await t.admin.policy('uplink-limits')).toMatchObject({
    role: 'device',
    filter: 'devices/+/up/#',
    encryption: 'required',
    suites: [1, 2],
    max_payload: 4096,
    max_qos: 1,
    retain: false,
    rotation: { messages: 500 },
  });
  const list = await admin('policy', 'list');
  expect(list.out).toMatch(/^version 1\n/);
  expect(list.out).toMatch(
    /uplink-limits +device +\* +devices\/\+\/up\/# +required +SM4-GCM,SM4-CTR-HMAC-SM3 +4096 +1 +false/,
  );
  const show = await admin('policy', 'show', 'uplink-limits');
  expect(show.out).toMatch(/subject +every device/);
  expect(show.out).toMatch(/suites +SM4-GCM, SM4-CTR-HMAC-SM3\n/);
  expect(show.out).toMatch(/rotation +messages 500/);
  const json = await admin('--json', 'policy', 'show', 'uplink-limits');
  expect(JSON.parse(json.out)).toMatchObject({ policy_id: 'uplink-limits', version: 1, suites: [1, 2] });
  expect(await admin('policy', 'delete', 'uplink-limits')).toMatchObject({
    code: 0,
    out: 'deleted policy uplink-limits; the table is now at version 2',
  });
  const gone = await admin('policy', 'show', 'uplink-limits');
  expect(gone).toMatchObject({ code: 1 });
  expect(gone.err).toMatch(/KMS_ERR_NOT_FOUND/);
});

it('an end-to-end entry names its application, and show says which', async () => {
  const set = await admin(
    ...['policy', 'set', 'vault-secret', '--role', 'device', '--filter', 'devices/+/up/secret/#'],
    ...['--encryption', 'end-to-end', '--app', 'vault'],
  );
  expect(set.code).toBe(0);
  expect((await admin('policy', 'show', 'vault-secret')).out).toMatch(/encryption\s+end-to-end \(read by app vault\)/);
  expect((await t.admin.policy('vault-secret')).app).toBe('vault');
  expect((await admin('policy', 'delete', 'vault-secret')).code).toBe(0);
});

it.each([
  [['policy', 'set', 'p', '--filter', '#', '--encryption', 'required'], /--role is required/],
  [['policy', 'set', 'p', '--role', 'device', '--encryption', 'required'], /--filter is required/],
  [['policy', 'set', 'p', '--role', 'device', '--filter', '#', '--encryption', 'maybe'], /--encryption must be one of/],
  [['policy', 'set', 'p', '--role', 'device', '--filter', 'a/#/b', '--encryption', 'required'], /filter_wildcard/],
  [
    ['policy', 'set', 'p', '--role', 'app', '--filter', '#', '--encryption', 'plaintext', '--suites', '1'],
    /plaintext_with_suites/,
  ],
  [['policy', 'set', 'p', '--role', 'app', '--filter', '#', '--encryption', 'optional', '--suites', 'AES'], /--suites/],
  [['policy', 'set', 'p', '--role', 'app', '--filter', '#', '--encryption', 'optional', '--max-qos', '3'], /--max-qos/],
  [
    ['policy', 'set', 'p', '--role', 'app', '--filter', '#', '--encryption', 'optional', '--rotate-bytes', '0'],
    /at least 1/,
  ],
  [
    ['policy', 'set', 'p', '--role', 'app', '--principal', 'a/b', '--filter', '#', '--encryption', 'optional'],
    /principal/,
  ],
  [['policy', 'set', 'p', '--role', 'device', '--filter', '#', '--encryption', 'end-to-end'], /end_to_end_without_app/],
  [
    ['policy', 'set', 'p', '--role', 'device', '--filter', '#', '--encryption', 'required', '--app', 'vault'],
    /app_without_end_to_end/,
  ],
  [['policy', 'set', 'p', '--role', 'device', '--filter', '#', '--encryption', 'end-to-end', '--app', 'a/b'], /app/],
  [['policy', 'show'], /missing policy id/],
  [['policy', 'frobnicate'], /unknown command "policy frobnicate"/],
])('usage error before the key service is asked: %j', async (argv, message) => {
  const version = (await t.admin.policies()).version;
  const r = await admin(...argv);
  expect(r.code).toBe(2);
  expect(r.err).toMatch(message);
  expect((await t.admin.policies()).version).toBe(version);
});
