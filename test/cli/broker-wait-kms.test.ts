// `qkey broker` started before its key service waits for it with backoff, then starts; with --wait-kms 1 and no
// key service it gives up with exit 3.
import { spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';
import { removeDir, startTestKms, tempDir } from '../helpers/kms.js';
import { QKEY_BIN, spawnQkey } from '../helpers/process.js';
import { initDataDir } from '../../key-service/data-dir.js';
import { freePort } from '../helpers/ports.js';

it('waits for a key service that starts after it, saying so, then listens', async () => {
  const port = await freePort();
  const dir = tempDir('qkey-wait-kms-');
  initDataDir(dir);
  const broker = await spawnQkey(
    ['broker', '--port', '0', '--http-port', 'off', '--kms', `http://127.0.0.1:${port}`, '--data', dir],
    /waiting for the key service: key service unreachable at http:\/\/127\.0\.0\.1:\d+: connect ECONNREFUSED/,
    { QKEY_ADMIN_TOKEN: 'test-admin-token' },
  );
  const kms = await startTestKms({ port }, dir);
  try {
    const until = Date.now() + 30_000;
    while (!/qkey broker listening: mqtt mqtt:\/\/127\.0\.0\.1:\d+/.test(broker.output())) {
      if (Date.now() > until || broker.proc.exitCode !== null) throw new Error(broker.output());
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    expect(await broker.stop()).toBe(0);
    await kms.stop();
    removeDir(dir);
  }
}, 60_000);

it('gives up after --wait-kms seconds with exit 3, naming the URL', async () => {
  const port = await freePort();
  const dir = tempDir('qkey-wait-kms-');
  try {
    const r = spawnSync(
      process.execPath,
      [
        QKEY_BIN,
        'broker',
        '--port',
        '0',
        '--http-port',
        'off',
        '--kms',
        `http://127.0.0.1:${port}`,
        '--data',
        dir,
        '--wait-kms',
        '1',
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(
      new RegExp(`the key service at http://127.0.0.1:${port} did not answer within 1 s \\(--wait-kms\\)`),
    );
    expect(r.stdout).not.toMatch(/listening/);
  } finally {
    removeDir(dir);
  }
}, 60_000);
