// `qkey kms init` and `qkey kms` on damaged data folders: only an explicit init creates a key service, every kind of
// damage is refused with its code and the folder's name (nothing changed), and the files stay private under any umask.
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { initDataDir, type InitStep } from '../../key-service/data-dir.js';
import { runQkey } from '../helpers/cli.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { QKEY_BIN } from '../helpers/process.js';

const cleanup: string[] = [];
afterEach(() => cleanup.splice(0).forEach(removeDir));

function dir(): string {
  const d = tempDir('qkey-kms-cli-');
  cleanup.push(d);
  return d;
}

const mode = (path: string) => statSync(path).mode & 0o777;

const digest = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Every file's name and bytes (as a digest), to show a refusal changed nothing. */
function snapshot(d: string): Record<string, string> {
  if (!existsSync(d)) return {};
  if (statSync(d).isFile()) return { [d]: digest(d) };
  return Object.fromEntries(
    readdirSync(d)
      .sort()
      .map((f) => [f, statSync(join(d, f)).isFile() ? digest(join(d, f)) : 'dir']),
  );
}

/** Runs the built qkey under `umask 000` (a shell in between sets it; Node's workers cannot). */
function qkeyUnderUmask(args: string[]): ChildProcess {
  return spawn('sh', ['-c', 'umask 000 && exec "$0" "$@"', process.execPath, QKEY_BIN, ...args], {
    env: { ...process.env, QKEY_ADMIN_TOKEN: '', QKEY_KMS_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

async function init(d: string) {
  const r = await runQkey('kms', 'init', '--data', d);
  expect(r).toMatchObject({ code: 0 });
  return r;
}

describe('qkey kms init', () => {
  it('creates the folder and a complete key service, and prints what it created', async () => {
    const d = join(dir(), 'new', 'data');
    const r = await init(d);
    expect(r.out).toContain(`created a new key service in ${d}`);
    for (const item of [
      '(folder, 0700)',
      'master-key.v1 (master key, 0600)',
      'kms.db (database',
      'admin-token (admin token, 0600)',
    ])
      expect(r.out).toContain(item);
    expect(mode(d)).toBe(0o700);
    expect(readdirSync(d).sort()).toEqual(['admin-token', 'kms.db', 'master-key.v1']);
  });

  it('never touches a folder that already holds a key service, or part of one', async () => {
    const d = dir();
    await init(d);
    const before = snapshot(d);
    const again = await runQkey('kms', 'init', '--data', d);
    expect(again.code).toBe(1);
    expect(again.err).toContain(`KMS_DATA_ERR_EXISTS: data folder ${d}`);
    expect(snapshot(d)).toEqual(before);
    // A lone master key (its database lost) is exactly what must not be replaced.
    rmSync(join(d, 'kms.db'));
    rmSync(join(d, 'admin-token'));
    const lone = snapshot(d);
    expect((await runQkey('kms', 'init', '--data', d)).err).toMatch(/KMS_DATA_ERR_EXISTS.*found master-key\.v1/);
    expect(snapshot(d)).toEqual(lone);
  });

  it('makes an existing folder 0700 and every file 0600 under umask 000', async () => {
    const d = dir();
    chmodSync(d, 0o777);
    const p = qkeyUnderUmask(['kms', 'init', '--data', d]);
    expect(await new Promise((r) => p.once('exit', r))).toBe(0);
    expect(mode(d)).toBe(0o700);
    for (const f of readdirSync(d)) expect([f, mode(join(d, f))]).toEqual([f, 0o600]);
  });
});

describe('qkey kms refuses a damaged data folder', () => {
  const cases: Array<[string, (d: string) => void, string]> = [
    ['a folder that does not exist', (d) => rmSync(d, { recursive: true }), 'KMS_DATA_ERR_NO_FOLDER'],
    [
      'a file where the folder should be',
      (d) => (rmSync(d, { recursive: true }), writeFileSync(d, 'x')),
      'KMS_DATA_ERR_NOT_A_FOLDER',
    ],
    [
      'an empty folder (a mistyped --data)',
      (d) => readdirSync(d).forEach((f) => rmSync(join(d, f))),
      'KMS_DATA_ERR_NOT_INITIALISED',
    ],
    ['no database', (d) => rmSync(join(d, 'kms.db')), 'KMS_DATA_ERR_NO_DATABASE'],
    [
      'an empty (zero-byte) database next to its master key',
      (d) => writeFileSync(join(d, 'kms.db'), ''),
      'KMS_DATA_ERR_EMPTY_DATABASE',
    ],
    [
      'a master key without a database',
      (d) => (rmSync(join(d, 'kms.db')), rmSync(join(d, 'admin-token'))),
      'KMS_DATA_ERR_NO_DATABASE',
    ],
    ['a database without its master key', (d) => rmSync(join(d, 'master-key.v1')), 'KMS_DATA_ERR_NO_MASTER_KEY'],
    [
      "a database whose master key version is not the folder's",
      (d) => {
        writeFileSync(join(d, 'master-key.v2'), readFileSync(join(d, 'master-key.v1')), { mode: 0o600 });
        rmSync(join(d, 'master-key.v1'));
      },
      'KMS_DATA_ERR_NO_MASTER_KEY',
    ],
    [
      'a kms.db that is not SQLite',
      (d) => writeFileSync(join(d, 'kms.db'), 'not a database at all'.repeat(100)),
      'KMS_DATA_ERR_NOT_A_DATABASE',
    ],
    [
      "another application's SQLite database",
      (d) => {
        rmSync(join(d, 'kms.db'));
        const other = new Database(join(d, 'kms.db'));
        other.exec('CREATE TABLE notes (text TEXT)');
        other.close();
      },
      'KMS_DATA_ERR_NOT_A_DATABASE',
    ],
    ['an interrupted init', (d) => writeFileSync(join(d, 'init-incomplete'), ''), 'KMS_DATA_ERR_INIT_INCOMPLETE'],
  ];

  it.each(cases)(
    '%s: exit 1, the code and the folder named, nothing created or changed',
    async (_name, damage, code) => {
      const d = dir();
      await init(d);
      damage(d);
      const before = snapshot(d);
      for (const args of [['kms'], ['kms', 'rotate-master-key']]) {
        const r = await runQkey(...args, '--port', '0', '--data', d);
        expect(r.code).toBe(1);
        expect(r.err).toContain(`${code}: data folder ${d} `);
        expect(r.err).toContain('nothing was changed');
        expect(snapshot(d)).toEqual(before);
      }
      if (code === 'KMS_DATA_ERR_NO_FOLDER') expect(existsSync(d)).toBe(false);
    },
  );
});

describe('a running key service', () => {
  it('makes an existing folder 0700 and kms.db, its WAL and SHM 0600, under umask 000', async () => {
    const d = dir();
    initDataDir(d);
    chmodSync(d, 0o755);
    chmodSync(join(d, 'kms.db'), 0o644);
    const p = qkeyUnderUmask(['kms', '--port', '0', '--data', d]);
    let out = '';
    await new Promise<void>((resolve, reject) => {
      p.stdout!.on('data', (c: Buffer) => ((out += c.toString()), /listening on/.test(out) && resolve()));
      p.stderr!.on('data', (c: Buffer) => (out += c.toString()));
      p.once('exit', () => reject(new Error(out)));
    });
    try {
      expect(mode(d)).toBe(0o700);
      for (const f of ['kms.db', 'kms.db-wal', 'kms.db-shm']) expect([f, mode(join(d, f))]).toEqual([f, 0o600]);
    } finally {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
  });
});

describe('an init that dies part way', () => {
  it.each<InitStep>(['marker', 'master-key', 'database', 'admin-token'])(
    'after the %s step: qkey kms refuses it as incomplete, and the next init starts over',
    async (step) => {
      const d = dir();
      expect(() =>
        initDataDir(d, {
          afterStep: (s) => {
            if (s === step) throw new Error('power loss');
          },
        }),
      ).toThrow('power loss');
      const r = await runQkey('kms', '--port', '0', '--data', d);
      expect([r.code, r.err]).toEqual([1, expect.stringContaining('KMS_DATA_ERR_INIT_INCOMPLETE')]);
      await init(d);
      expect(readdirSync(d).sort()).toEqual(['admin-token', 'kms.db', 'master-key.v1']);
    },
  );

  it('kill -9 while a file is being created: the folder either works or is refused and re-initialised', async () => {
    for (const target of ['master-key.v1', 'kms.db', 'kms.db-wal', 'admin-token']) {
      const d = join(dir(), 'data');
      const child = spawn(process.execPath, [QKEY_BIN, 'kms', 'init', '--data', d], { stdio: 'ignore' });
      const exited = new Promise((r) => child.once('exit', r));
      // Kill the moment the file appears (or let it finish): where exactly it lands does not matter, any outcome
      // must satisfy what follows.
      while (child.exitCode === null && !existsSync(join(d, target))) await new Promise((r) => setImmediate(r));
      child.kill('SIGKILL');
      await exited;
      const check = await runQkey('kms', 'rotate-master-key', '--data', d);
      if (check.code !== 0) {
        expect(check.err).toMatch(/KMS_DATA_ERR_(NO_FOLDER|NOT_INITIALISED|INIT_INCOMPLETE)/);
        await init(d);
        expect((await runQkey('kms', 'rotate-master-key', '--data', d)).code).toBe(0);
      }
      expect(readdirSync(d).sort()).toEqual(['admin-token', 'kms.db', expect.stringMatching(/^master-key\.v\d+$/)]);
    }
  }, 120_000);
});

it('qkey kms --init creates a missing key service and then runs it; mkdir alone is not enough', async () => {
  const d = join(dir(), 'fresh');
  mkdirSync(d);
  expect((await runQkey('kms', '--port', '0', '--data', d)).err).toContain('KMS_DATA_ERR_NOT_INITIALISED');
  const p = spawn(process.execPath, [QKEY_BIN, 'kms', '--init', '--port', '0', '--data', d], {
    env: { ...process.env, QKEY_KMS_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    p.stdout!.on('data', (c: Buffer) => ((out += c.toString()), /listening on/.test(out) && resolve()));
    p.once('exit', () => reject(new Error(out)));
  });
  p.kill('SIGTERM');
  await new Promise((r) => p.once('exit', r));
  expect(out).toContain('qkey kms: created');
  expect(out).toContain('master-key.v1 (master key, 0600)');
});

it('qkey kms --cors-origin takes origins only (repeatable); a wildcard or a path is a configuration error', async () => {
  const d = tempDir();
  try {
    for (const bad of ['*', 'https://app.example/', 'null']) {
      const r = await runQkey('kms', '--data', d, '--cors-origin', 'https://ok.example', '--cors-origin', bad);
      expect(r.code, bad).toBe(1);
      expect(r.err).toMatch(/CONFIG_ERR_INVALID: "corsOrigins\.1" \(from a command-line flag/);
    }
  } finally {
    removeDir(d);
  }
});
