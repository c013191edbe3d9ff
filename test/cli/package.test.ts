// The package as another project gets it: `npm pack` (what `files` ships: no benchmarks, no source maps), unpacked
// into a scratch project's node_modules, and README's "Embedding the plugin" example type-checked with tsc against
// the shipped declarations and run against a key service, where it refuses a bad login and accepts an app.
// npm's own install needs the registry for the dependencies, which CI runs without: the scratch project gets this
// checkout's installed dependencies linked into its node_modules instead, as `npm install` would have placed them.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { removeDir, startTestKms, type TestKms, tempDir } from '../helpers/kms.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const scratch = tempDir('qkey-package-');
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
let files: string[] = [];

function embeddingExample(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Embedding the plugin'));
  const m = /```ts\n([\s\S]*?)\n```/.exec(section);
  if (!m) throw new Error('README has no ```ts block under "Embedding the plugin"');
  return m[1]!;
}

function typeCheck(file: string): { ok: boolean; output: string } {
  writeTsconfig(file);
  try {
    const output = execFileSync(process.execPath, [TSC, '-p', join(scratch, 'tsconfig.json')], {
      cwd: scratch,
      encoding: 'utf8',
    });
    return { ok: true, output };
  } catch (err) {
    return { ok: false, output: String((err as { stdout?: string }).stdout) };
  }
}

function writeTsconfig(file: string): void {
  writeFileSync(
    join(scratch, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        types: ['node'],
        skipLibCheck: true,
        outDir: 'out',
      },
      files: [file],
    }),
  );
}

let t: TestKms;
beforeAll(async () => {
  const packed = JSON.parse(
    execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', scratch], {
      cwd: ROOT,
      encoding: 'utf8',
    }),
  ) as Array<{ filename: string; files: Array<{ path: string }> }>;
  files = packed[0]!.files.map((f) => f.path);
  const modules = join(scratch, 'node_modules');
  mkdirSync(join(modules, 'qkey-mqtt'), { recursive: true });
  execFileSync('tar', [
    'xzf',
    join(scratch, packed[0]!.filename),
    '-C',
    join(modules, 'qkey-mqtt'),
    '--strip-components=1',
  ]);
  for (const name of readdirSync(join(ROOT, 'node_modules'))) {
    if (name.startsWith('.') || name === 'qkey-mqtt') continue;
    symlinkSync(join(ROOT, 'node_modules', name), join(modules, name));
  }
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  t = await startTestKms();
}, 120_000);
afterAll(async () => {
  await t?.stop();
  if (t) removeDir(t.dataDir);
  removeDir(scratch);
});

it('ships the compiled code with declarations and the bin, and no benchmarks, tests, maps or build info', () => {
  expect(files).toContain('dist/broker/index.js');
  expect(files).toContain('dist/broker/index.d.ts');
  expect(files).toContain('dist/protocol/index.d.ts');
  expect(files).toContain('dist/kms-api/client.d.ts');
  expect(files).toContain('dist/device-sim/app-session.d.ts');
  expect(files).toContain('dist/cli/bin.js');
  expect(files).toContain('scripts/check-node.mjs');
  expect(files.filter((f) => /^dist\/bench\/|\.map$|tsbuildinfo|^test\/|^bench\//.test(f))).toEqual([]);
});

it("README's embedding example type-checks against the package, and a misuse does not", () => {
  // The declarations are really checked: a wrong option is an error, not an implicit any.
  writeFileSync(
    join(scratch, 'wrong.ts'),
    "import { createQkeyPlugin } from 'qkey-mqtt';\ncreateQkeyPlugin({ kms: 'http://127.0.0.1:7070' });\n",
  );
  const wrong = typeCheck('wrong.ts');
  expect(wrong.ok).toBe(false);
  expect(wrong.output).toMatch(/wrong\.ts.*error TS2(322|345|741)/);
  // Every export the package names resolves, with its declarations.
  writeFileSync(
    join(scratch, 'exports.ts'),
    [
      "import { AppSession } from 'qkey-mqtt/app-session';",
      "import { KmsClient } from 'qkey-mqtt/kms-client';",
      "import { sealEnvelope } from 'qkey-mqtt/protocol';",
      "import { BrowserAppSession } from 'qkey-mqtt/browser-client';",
      'export const used: unknown[] = [AppSession.start, KmsClient, sealEnvelope, BrowserAppSession.start];',
    ].join('\n'),
  );
  const exported = typeCheck('exports.ts');
  expect(exported.ok, exported.output).toBe(true);
  writeFileSync(join(scratch, 'server.ts'), embeddingExample());
  const good = typeCheck('server.ts'); // and compiles it to out/server.js for the next test
  expect(good.ok, good.output).toBe(true);
}, 120_000);

it("README's embedding example runs: Aedes with the plugin refuses a bad token and accepts an application", async () => {
  const { client_secret } = await t.admin.registerBroker('my-broker');
  const app = await t.admin.registerApp('embed-app');
  const proc = spawn(process.execPath, [join(scratch, 'out', 'server.js')], {
    cwd: scratch,
    env: { ...process.env, QKEY_KMS_URL: t.url, QKEY_BROKER_SECRET: client_secret, PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (out += c.toString()));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      proc.stdout.on('data', () => {
        const m = /MQTT listening on .*port: (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      proc.once('exit', (code) => reject(new Error(`the example exited with ${code}:\n${out}`)));
    });
    const url = `mqtt://127.0.0.1:${port}`;
    const refused = await mqtt
      .connectAsync(
        url,
        { clientId: 'embed-app/x', username: 'embed-app', password: 'forged', reconnectPeriod: 0 },
        false,
      )
      .then(
        (c) => c.endAsync().then(() => 'connected'),
        (err: Error & { code?: number }) => err.code,
      );
    expect(refused).toBe(4); // CONNACK 4: bad user name or password
    const { access_token } = await t.anon.clientToken('embed-app', app.client_secret);
    const client = await mqtt.connectAsync(
      url,
      { clientId: 'embed-app/x', username: 'embed-app', password: access_token, reconnectPeriod: 0 },
      false,
    );
    expect(client.connected).toBe(true);
    await client.endAsync();
  } finally {
    proc.kill('SIGTERM');
  }
}, 60_000);
