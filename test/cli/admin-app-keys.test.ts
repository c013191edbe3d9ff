// `qkey admin app-keys` against a real key service: the pool's levels, a fill from the QRNG emulator (in batches,
// audited, never printing a key), a batch id used twice, a fill stopped part-way, a failing QRNG, usage errors
// caught before the key service is asked, and an unreachable key service.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppKeyFillError, runAppKeysCommand } from '../../cli/admin-app-keys.js';
import { FaultyNoiseSource, SeededNoiseSource } from '../../hsm-emulator/noise-source.js';
import { Qrng, QrngHealthError } from '../../hsm-emulator/qrng.js';
import { appKeyLevels } from '../../kms-api/app-session-client.js';
import { runQkey } from '../helpers/cli.js';
import { removeDir, startTestKms, type TestKms } from '../helpers/kms.js';
import { freePort } from '../helpers/ports.js';

let t: TestKms;
const admin = (...argv: string[]) => runQkey('admin', '--kms', t.url, '--token', 'test-admin-token', ...argv);
/** 16 bytes in base64, as a key would be printed. */
const BASE64_KEY = /[A-Za-z0-9+/]{22}==/;

beforeAll(async () => {
  t = await startTestKms();
});
afterAll(async () => {
  await t.stop();
  removeDir(t.dataDir);
});

describe('qkey admin app-keys', () => {
  it('shows the levels, fills from the QRNG, audits the fill, and never prints a key', async () => {
    expect(await admin('app-keys')).toMatchObject({
      code: 0,
      out: 'application key pool: 0 unused, 0 issued, 0 claimed, 0 expired',
    });
    const fill = await admin('app-keys', 'fill', '--count', '3', '--batch', 'first');
    expect(fill).toMatchObject({
      code: 0,
      err: '',
      out: 'filled 3 application keys from the QRNG in batch first\napplication key pool: 3 unused, 0 issued, 0 claimed, 0 expired',
    });
    const audit = await t.admin.audit({ action: 'app_keys.fill' });
    expect(audit.entries[0]).toMatchObject({ actor: 'admin', detail: { batch_id: 'first', count: 3 } });
    expect(JSON.stringify(audit)).not.toMatch(BASE64_KEY);
  });

  it('more than a batch goes in several (<id>, <id>-2), and --json prints them with the levels', async () => {
    const r = await admin('--json', 'app-keys', 'fill', '--count', '1001', '--batch', 'big');
    expect(r.code).toBe(0);
    expect(r.out).not.toMatch(BASE64_KEY);
    expect(JSON.parse(r.out)).toMatchObject({
      batches: [
        { batch_id: 'big', count: 1000 },
        { batch_id: 'big-2', count: 1 },
      ],
      count: 1001,
      levels: { filled: 1004 },
    });
  });

  it('without --batch, each fill gets a batch id of its own', async () => {
    const a = JSON.parse((await admin('--json', 'app-keys', 'fill', '--count', '1')).out) as {
      batches: Array<{ batch_id: string }>;
    };
    const b = JSON.parse((await admin('--json', 'app-keys', 'fill', '--count', '1')).out) as typeof a;
    expect(a.batches[0]!.batch_id).toMatch(/^app-keys-\d{8}T\d{9}Z-[0-9a-f]{8}$/);
    expect(a.batches[0]!.batch_id).not.toBe(b.batches[0]!.batch_id);
  });

  it('a batch id used before is refused (1) and fills nothing', async () => {
    const before = await appKeyLevels(t.admin);
    const r = await admin('app-keys', 'fill', '--count', '2', '--batch', 'first');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/KMS_ERR_CONFLICT/);
    expect(r.err).toMatch(/nothing was filled/);
    expect(await appKeyLevels(t.admin)).toEqual(before);
  });

  it('stopped at its second batch: the first stays filled and is named', async () => {
    await admin('app-keys', 'fill', '--count', '1', '--batch', 'part-2');
    const before = await appKeyLevels(t.admin);
    const r = await admin('app-keys', 'fill', '--count', '1001', '--batch', 'part');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/KMS_ERR_CONFLICT/);
    expect(r.err).toMatch(/batches filled before it stay filled: part$/m);
    expect((await appKeyLevels(t.admin)).filled).toBe(before.filled + 1000);
  });

  it('a QRNG that fails its health tests sends nothing', async () => {
    const before = await appKeyLevels(t.admin);
    const stuck = () =>
      new Qrng({ source: new FaultyNoiseSource(new SeededNoiseSource('x'), { kind: 'stuck', after: 0 }) });
    const err = await runAppKeysCommand('fill', { count: '5', batch: 'stuck' }, t.admin, () => undefined, stuck).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AppKeyFillError);
    expect((err as AppKeyFillError).reason).toBeInstanceOf(QrngHealthError);
    expect((err as AppKeyFillError).filled).toEqual([]);
    expect(await appKeyLevels(t.admin)).toEqual(before);
  });

  it('usage errors exit 2 before the key service is asked', async () => {
    const port = await freePort();
    const offline = (...argv: string[]) =>
      runQkey('admin', '--kms', `http://127.0.0.1:${port}`, '--token', 'x', 'app-keys', ...argv);
    for (const argv of [
      ['fill'],
      ['fill', '--count', '0'],
      ['fill', '--count', '100001'],
      ['fill', '--count', '-1'],
      ['fill', '--count', '1e3'],
      ['fill', '--count', '2', '--batch', '-x'],
      ['fill', '--count', '2', '--batch=-x'],
      ['fill', '--count', '2', '--batch', 'has space'],
      ['fill', '--count', '2', '--batch', 'x'.repeat(257)],
      ['--count', '3'],
      ['empty'],
    ]) {
      const r = await offline(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(/see qkey admin --help/);
    }
  });

  it('an unreachable key service exits 3; a URL without a scheme exits 2', async () => {
    const port = await freePort();
    const r = await runQkey('admin', '--kms', `http://127.0.0.1:${port}`, '--token', 'x', 'app-keys');
    expect(r.code).toBe(3);
    const fill = await runQkey(
      'admin',
      '--kms',
      `http://127.0.0.1:${port}`,
      '--token',
      'x',
      'app-keys',
      'fill',
      '--count',
      '1',
    );
    expect(fill.code).toBe(3);
    expect(fill.err).toMatch(/nothing was filled/);
    expect((await runQkey('admin', '--kms', `127.0.0.1:${port}`, '--token', 'x', 'app-keys')).code).toBe(2);
  });

  it('--help names the command', async () => {
    const r = await runQkey('admin', 'app-keys', 'fill', '--help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: qkey admin app-keys fill \.\.\.\n\n {2}app-keys fill --count <n>/);
  });
});
