// `qkey broker` argument handling: usage errors exit 2, bad configuration values 1, each with a message, and
// nothing starts.
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { runQkey as run } from '../helpers/cli.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { QKEY_BIN } from '../helpers/process.js';

describe('qkey broker arguments', () => {
  it.each([
    [['--semi-space', 'big'], /--semi-space must be a whole number of MiB/],
    [['--semi-space=-5'], /--semi-space must be a whole number of MiB/],
    [['--port', '70000'], /--port must be a port number or "off"/],
    [['--tls-port', '8883'], /--tls-port needs --cert and --key/],
    [['--persistence', 'redis'], /--persistence must be "sqlite" or "memory", not "redis"/],
    [['--persistence', 'SQLite'], /--persistence must be "sqlite" or "memory", not "SQLite"/],
  ])('refuses %j', async (args, message) => {
    const r = await run('broker', ...args);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
  });

  it('refuses a semi-space outside 0..1024 MiB as a configuration error, before starting anything', async () => {
    const r = await run('broker', '--semi-space', '5000');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /CONFIG_ERR_INVALID: "semiSpaceMiB" = 5000 \(from a command-line flag.*expected an integer from 0 to 1024/,
    );
  });

  it('refuses a --ws-origin that is not an origin as a configuration error (no wildcard, no path)', async () => {
    for (const bad of ['*', 'https://app.example/', 'app.example']) {
      const r = await run('broker', '--ws-port', '0', '--ws-origin', 'https://ok.example', '--ws-origin', bad);
      expect(r.code, bad).toBe(1);
      expect(r.err).toMatch(/CONFIG_ERR_INVALID: "wsOrigins\.1" \(from a command-line flag/);
    }
  });

  it('lists --semi-space and --persistence in its help', async () => {
    const r = await run('broker', '--help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/--semi-space <MiB>/);
    expect(r.out).toMatch(/--persistence <kind> +sqlite \(default\)/);
  });

  it('a broker thread that cannot start says why and exits 3 (the built binary, key service down, --wait-kms 0)', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    await new Promise((r) => closed.close(r));
    const dir = tempDir('qkey-broker-cli-');
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
          '0',
        ],
        {
          encoding: 'utf8',
          timeout: 20_000,
          env: { ...process.env, QKEY_BROKER_SECRET: 'not-checked-before-the-kms' },
        },
      );
      expect(r.status).toBe(3);
      expect(r.stderr).toMatch(
        new RegExp(`qkey broker: key service unreachable at http://127.0.0.1:${port}: connect ECONNREFUSED`),
      );
      expect(r.stdout).not.toMatch(/listening/);
      expect(r.stdout + r.stderr).not.toContain('not-checked-before-the-kms'); // the secret is never printed
    } finally {
      removeDir(dir);
    }
  });
});
