// `qkey chip` and `qkey admin` through the callable CLI against a real key service: happy path and clear failures.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runQkey as run } from '../helpers/cli.js';
import { removeDir, startTestKms, type TestKms, tempDir } from '../helpers/kms.js';

let t: TestKms;
const dir = tempDir('qkey-cli-');
const chip = join(dir, 'dev-cli.chip');

beforeAll(async () => {
  t = await startTestKms();
  process.env.QKEY_CHIP_PIN = '13579';
});
afterAll(async () => {
  delete process.env.QKEY_CHIP_PIN;
  await t.stop();
  removeDir(t.dataDir);
  removeDir(dir);
});

describe('qkey chip and qkey admin', () => {
  it('init, fill, status, login, and the key service agrees', async () => {
    expect(
      await run('chip', 'init', '--chip', chip, '--device', 'dev-cli', '--serial', 'SN-7', '--kdf-iterations', '1000'),
    ).toMatchObject({ code: 0 });
    const fill = await run(
      'chip',
      'fill',
      '--chip',
      chip,
      '--kms',
      t.url,
      '--token',
      'test-admin-token',
      '--data',
      dir,
      '--up',
      '6',
      '--down',
      '4',
    );
    expect(fill.code).toBe(0);
    expect(fill.out).toMatch(/filled dev-cli: 6 uplink and 4 downlink keys and a login key/);
    const status = await run('chip', 'status', '--chip', chip, '--json');
    expect(JSON.parse(status.out)).toMatchObject({
      deviceId: 'dev-cli',
      serial: 'SN-7',
      uplinkKeys: 6,
      downlinkKeys: 4,
      hasLoginKey: true,
    });
    const login = await run('chip', 'login', '--chip', chip, '--kms', t.url);
    expect(login.out).toMatch(/^qk1\./);
    const show = await run(
      'admin',
      '--kms',
      t.url,
      '--token',
      'test-admin-token',
      '--json',
      'device',
      'show',
      'dev-cli',
    );
    expect(JSON.parse(show.out)).toMatchObject({ serial: 'SN-7', pool: { up: 6, down: 4 }, has_login_key: true });
    const audit = await run('admin', '--kms', t.url, '--token', 'test-admin-token', 'audit', '--device', 'dev-cli');
    expect(audit.out).toMatch(/batch\.commit/);
    expect(audit.out).toMatch(/login/);
  });

  it('wrong PIN, damaged file, unreachable key service and usage mistakes fail with clear, coded errors', async () => {
    process.env.QKEY_CHIP_PIN = '00000';
    const wrong = await run('chip', 'status', '--chip', chip);
    expect(wrong).toMatchObject({ code: 1 });
    expect(wrong.err).toMatch(/CHIP_ERR_PIN: wrong PIN; 4 attempt\(s\) left/);
    process.env.QKEY_CHIP_PIN = '13579';
    const unreachable = await run(
      'chip',
      'fill',
      '--chip',
      chip,
      '--kms',
      'http://127.0.0.1:1',
      '--token',
      'x',
      '--up',
      '1',
    );
    expect(unreachable.code).toBe(3);
    expect(unreachable.err).toMatch(/key service unreachable at http:\/\/127.0.0.1:1: connect ECONNREFUSED/);
    const missing = await run('chip', 'status', '--chip', join(dir, 'none.chip'));
    expect(missing.err).toMatch(/CHIP_ERR_NOT_FOUND/);
    const badAdmin = await run('admin', '--kms', t.url, '--token', 'wrong', 'device', 'list');
    expect(badAdmin).toMatchObject({ code: 1 });
    expect(badAdmin.err).toMatch(
      /KMS_ERR_UNAUTHORIZED: admin token refused by the key service \(the token from --token/,
    );
    const noToken = await run('admin', '--kms', t.url, '--data', join(dir, 'nowhere'), 'device', 'list');
    expect(noToken).toMatchObject({ code: 2 });
    expect(noToken.err).toMatch(/no admin token: pass --token, set QKEY_ADMIN_TOKEN/);
    const help = await run('chip', '--help');
    expect(help.code).toBe(0);
    expect(help.out.replace(/\s+/g, ' ')).toMatch(/batches of at most 4096 keys, all or nothing per batch/);
    for (const argv of [
      ['chip', 'status'],
      ['chip', 'init', '--chip', join(dir, 'x.chip')],
      ['chip', 'fill', '--chip', chip, '--token', 'x'],
      ['chip', 'fill', '--chip', chip, '--token', 'x', '--up', 'many'],
      ['chip', 'explode', '--chip', chip],
      ['admin', '--token', 'x', 'device', 'frobnicate'],
      ['admin', '--token', 'x', 'device', 'show'],
      ['admin', '--kms', t.url, '--data', join(dir, 'no-such-folder'), 'device', 'list'], // no admin token anywhere
    ]) {
      const r = await run(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(/--help/);
    }
  });

  it('an id outside the id rule (docs/PROTOCOL.md §14) is a usage error, before any chip file or key-service call', async () => {
    const bad = join(dir, 'bad.chip');
    const init = await run('chip', 'init', '--chip', bad, '--device', 'sensor-é', '--kdf-iterations', '1000');
    expect(init).toMatchObject({ code: 2 });
    expect(init.err).toMatch(/device id "sensor-é" is not valid: character 8 \(U\+00E9\)/);
    expect(existsSync(bad)).toBe(false);
    for (const [kind, id] of [
      ['device', 'dev/1'],
      ['app', '+'],
      ['broker', 'b$'],
    ] as const) {
      const add = await run('admin', '--kms', t.url, '--token', 'test-admin-token', kind, 'add', id);
      expect(add, `${kind} ${id}`).toMatchObject({ code: 2 });
      expect(add.err).toMatch(/is not valid/);
    }
    expect((await t.admin.listDevices()).devices.map((d) => d.device_id)).not.toContain('dev/1');
  });
});
