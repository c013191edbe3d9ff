// Key-service configuration: defaults, precedence, TLS as PEM file paths, and refusals naming the key, where its value
// came from and what is allowed: unknown keys, wrong types, out-of-range values, from a file, the environment or flags.
import { readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:https';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KMS_DEFAULTS, loadKmsConfig } from '../../key-service/config.js';
import { runQkey } from '../helpers/cli.js';
import { removeDir, startTestKms, tempDir } from '../helpers/kms.js';
import { selfSignedLoopbackCert } from '../helpers/certificates.js';

const dir = tempDir('qkey-kms-config-');
afterAll(() => removeDir(dir));
let n = 0;
function file(content: string): string {
  const path = join(dir, `kms-${n++}.json`);
  writeFileSync(path, content);
  return path;
}
const fromFile = (content: unknown) =>
  loadKmsConfig({}, { configFile: file(typeof content === 'string' ? content : JSON.stringify(content)), env: {} });

describe('loadKmsConfig', () => {
  it('defaults, then a file, then the environment, then flags; nested objects merge key by key', () => {
    expect(KMS_DEFAULTS).toMatchObject({
      port: 7070,
      tokenTtl: { device: 600, app: 3600, broker: 3600 },
      trustProxy: [],
    });
    const c = loadKmsConfig(
      { port: 7072, tokenTtl: { app: 120 } },
      {
        configFile: file(
          JSON.stringify({ port: 7071, host: '0.0.0.0', tokenTtl: { device: 60 }, loginLimits: { perSource: 7 } }),
        ),
        env: { QKEY_KMS_PORT: '7073', QKEY_KMS_LOG_LEVEL: 'warn' },
      },
    );
    expect([c.port, c.host, c.logLevel]).toEqual([7072, '0.0.0.0', 'warn']);
    expect(c.tokenTtl).toEqual({ device: 60, app: 120, broker: 3600 });
    expect(c.loginLimits).toMatchObject({ perSource: 7, perSubjectSource: 10 });
  });

  it('takes TLS as PEM file paths, as the broker does, and refuses unreadable ones by key', () => {
    const cert = file('-----BEGIN CERTIFICATE-----\n');
    const key = file('-----BEGIN PRIVATE KEY-----\n');
    expect(fromFile({ tls: { cert, key } }).tls).toEqual({ cert, key });
    expect(() => fromFile({ tls: { cert, key: '/nonexistent/key.pem' } })).toThrow(
      /"tls.key" = "\/nonexistent\/key.pem": cannot read that file \(ENOENT\)/,
    );
    expect(() => fromFile({ tls: { cert: '-----BEGIN CERTIFICATE-----\nMIIB...', key } })).toThrow(
      /"tls.cert" .* cannot read that file/,
    );
  });

  it('serves HTTPS from those PEM files', async () => {
    const { cert, key } = selfSignedLoopbackCert(dir);
    const t = await startTestKms({ tls: { cert, key } });
    try {
      expect(t.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const status = await new Promise<number | undefined>((resolve, reject) =>
        get(
          `${t.url}/api/v1/auth/keys`,
          { ca: readFileSync(cert) },
          (res) => (res.resume(), resolve(res.statusCode)),
        ).on('error', reject),
      );
      expect(status).toBe(200);
    } finally {
      await t.stop();
      removeDir(t.dataDir);
    }
  });

  it.each([
    [{ prot: 24071 }, /"prot" \(from config file .*\) is not a known key; did you mean "port"\?/],
    [{ tokenTtl: { devices: 60 } }, /"tokenTtl.devices" .* did you mean "tokenTtl.device"\?/],
    [
      { loginLimits: { perDevice: 5 } },
      /"loginLimits.perDevice" .* is not a known key\. Known keys of loginLimits: perSource, perSubjectSource/,
    ],
    [{ port: '7070' }, /"port" = "7070" .* expected an integer from 0 to 65535/],
    [
      { trustProxy: '10.0.0.1' },
      /"trustProxy" = "10.0.0.1" .* expected a list of at most 64 entries, each a non-empty string/,
    ],
    [
      { trustProxy: Array.from({ length: 65 }, (_, i) => `10.0.0.${i}`) },
      /"trustProxy" .* expected a list of at most 64 entries, each a non-empty string/,
    ],
    [{ tls: 'cert.pem' }, /"tls" = "cert.pem" .* expected an object with the keys cert, key/],
    [{ port: 70000 }, /"port" = 70000 .* expected an integer from 0 to 65535/],
    [{ challengeTtl: 0 }, /"challengeTtl" = 0 .* expected an integer from 5 to 3600/],
    [{ loginLimits: { challengeRate: 0 } }, /"loginLimits.challengeRate" = 0 .* expected an integer from 1 to 100000/],
    [{ bodyLimit: 1e12 }, /"bodyLimit" = 1000000000000 .* expected an integer from 1024 to 67108864/],
    [{ tls: { cert: 'c.pem' } }, /"tls.key" is missing \(tls from config file .*\)/],
  ])('refuses %j from a file, naming the key and what is allowed', (content, message) => {
    expect(() => fromFile(content)).toThrow(/^CONFIG_ERR_INVALID: /);
    expect(() => fromFile(content)).toThrow(message);
  });

  it('checks the environment and flags the same way; never repeats the admin token', () => {
    expect(() => loadKmsConfig({}, { env: { QKEY_KMS_PORT: '99999' } })).toThrow(
      /"port" = 99999 \(from environment variable QKEY_KMS_PORT\) is not allowed: expected an integer from 0 to 65535/,
    );
    expect(() => loadKmsConfig({}, { env: { QKEY_KMS_LOG_LEVEL: 'loud' } })).toThrow(
      /"logLevel" = "loud" \(from environment variable QKEY_KMS_LOG_LEVEL\)/,
    );
    expect(() => loadKmsConfig({ lowWater: -1 }, { env: {} })).toThrow(/"lowWater" = -1 \(from a command-line flag/);
    const secret = 's'.repeat(600);
    let message = '';
    try {
      loadKmsConfig({}, { env: { QKEY_ADMIN_TOKEN: secret } });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/"adminToken" \(from environment variable QKEY_ADMIN_TOKEN\) is not allowed/);
    expect(message).not.toContain('sss');
  });

  it('refuses a file that is not JSON, too large, or not a file', () => {
    expect(() => fromFile('port = 7070')).toThrow(/^CONFIG_ERR_NOT_JSON: config file .* is not JSON/);
    expect(() => fromFile(' '.repeat(1024 * 1024 + 1))).toThrow(/^CONFIG_ERR_TOO_LARGE/);
    expect(() => loadKmsConfig({}, { configFile: '/dev/zero', env: {} })).toThrow(
      /^CONFIG_ERR_UNREADABLE: .* not a regular file/,
    );
  });

  it('qkey kms refuses a bad config file with exit 1 before touching the data folder', async () => {
    const data = join(dir, 'never-created');
    const r = await runQkey('kms', 'init', '--data', data, '--config', file('{"concurency": 5}'));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^qkey kms: CONFIG_ERR_INVALID: "concurency" .* is not a known key/);
    expect((await runQkey('kms', '--port', '70000', '--data', data)).err).toMatch(
      /"port" = 70000 \(from a command-line flag/,
    );
  });
});
