// What every `qkey` command shares: help on every command and subcommand, --version, argument errors in the CLI's
// own words with exit 2, URLs without a scheme named as such, unreachable peers exit 3, the audit log newest
// first with paging, the key service's request lines at debug, and output into a closed pipe ending quietly.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseArgsMessage } from '../../cli/io.js';
import { runQkey as run } from '../helpers/cli.js';
import { removeDir, startTestKms, type TestKms, tempDir } from '../helpers/kms.js';
import { QKEY_BIN, spawnQkey } from '../helpers/process.js';

describe('help', () => {
  const commands: Array<[string[], RegExp]> = [
    [['kms'], /qkey kms \[--init\] \[options\]/],
    [['kms', 'init'], /^Usage: qkey kms init \.\.\.\n\n {2}init \[--data <dir>\]/],
    [['kms', 'rotate-master-key'], /^Usage: qkey kms rotate-master-key \.\.\.\n\n {2}rotate-master-key/],
    [['broker'], /--wait-kms <s>/],
    [['admin'], /Usage: qkey admin/],
    [['admin', 'device'], /^Usage: qkey admin device \.\.\.\n\n {2}device add[\s\S]* {2}device keys/],
    [['admin', 'device', 'revoke'], /^Usage: qkey admin device revoke \.\.\.\n\n {2}device revoke <id>/],
    [['admin', 'app', 'add'], /^Usage: qkey admin app add \.\.\.\n\n {2}app add <id>/],
    [['admin', 'audit'], /^Usage: qkey admin audit \.\.\.\n\n {2}audit .*--before <id>/],
    [['chip'], /Usage: qkey chip <command>/],
    [['chip', 'fill'], /^Usage: qkey chip fill \.\.\.\n\n {2}fill \[--up <n>\]/],
    [['chip', 'login'], /^Usage: qkey chip login \.\.\.\n\n {2}login/],
    [['device', 'publish'], /^Usage: qkey device publish \.\.\.\n\n {2}publish --topic/],
    [['device', 'listen'], /^Usage: qkey device listen \.\.\.\n\n {2}listen \[--topic/],
    [['envelope'], /Usage: qkey envelope seal\|open/],
    [['envelope', 'seal'], /^Usage: qkey envelope seal \.\.\.\n\n {2}seal --key <hex>/],
    [['envelope', 'open'], /^Usage: qkey envelope open \.\.\.\n\n {2}open --key <hex>/],
    [['sim'], /Usage: qkey sim/],
    [['demo'], /Usage: qkey demo/],
  ];
  it.each(commands)('qkey %j --help, -h, and qkey help ... print that usage and exit 0', async (words, usage) => {
    for (const argv of [
      [...words, '--help'],
      [...words, '-h'],
      ['help', ...words],
    ]) {
      const r = await run(...argv);
      expect(r, argv.join(' ')).toMatchObject({ code: 0, err: '' });
      expect(r.out, argv.join(' ')).toMatch(usage);
    }
  });

  it('--help wins over a bad flag next to it', async () => {
    expect(await run('envelope', 'seal', '--bogus', '--help')).toMatchObject({ code: 0 });
  });

  it('qkey --version names the package version; qkey alone prints the usage on stderr and exits 2', async () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    const v = await run('--version');
    expect(v.code).toBe(0);
    expect(v.out).toMatch(new RegExp(`^qkey ${pkg.version.replace(/\./g, '\\.')} \\(qkey-mqtt, Node\\.js v\\d+`));
    const none = await run();
    expect(none).toMatchObject({ code: 2, out: '' });
    expect(none.err).toMatch(/Exit status \(every command\): 0 ok; 1 refused/);
  });
});

describe('argument errors', () => {
  it.each([
    [['demo', '--devices', 'abc'], /qkey demo: --devices must be a whole number from 1 to 100, not "abc"/],
    [['demo', '--kms-port', '70000'], /--kms-port must be a whole number from 0 to 65535/],
    [['sim', '--devices', 'abc'], /qkey sim: --devices must be a whole number from 1 to 100000, not "abc"/],
    [['sim', '--rate', '1e9'], /--rate must be a number from 0.01 to 1000/],
    [['sim', '--broker', 'mqtt://127.0.0.1:1'], /--broker and --kms go together/],
    [['sim', '--keep-devices'], /--keep-devices needs --broker and --kms/],
    [
      ['chip', 'fill', '--chip', 'x.chip', '--up', '-5'],
      /--up needs a value; to give one that starts with "-", write --up=<value>/,
    ],
    [['chip', 'fill', '--chip', 'x.chip', '--up=-5'], /--up must be a whole number from 0 to 1000000, not "-5"/],
    [['chip', 'status', '--json=yes'], /--json takes no value/],
    [['admin', '--frobnicate', 'pools'], /qkey admin: unknown option --frobnicate \(see qkey admin --help\)/],
    [['admin', '--token', 'x', 'audit', '--limit', '0'], /--limit must be a whole number from 1 to 1000/],
    [
      ['admin', '--token', 'x', '--kms', 'localhost:7070', 'pools'],
      /--kms "localhost:7070" has no scheme: write http:\/\/localhost:7070/,
    ],
    [
      ['admin', '--token', 'x', '--kms', 'ftp://h:1', 'pools'],
      /--kms "ftp:\/\/h:1" is not a key service URL: the scheme must be http, https/,
    ],
    [
      ['device', 'publish', '--chip', 'x.chip', '--broker', '127.0.0.1:1883', '--topic', 't', '--message', 'm'],
      /--broker "127.0.0.1:1883" has no scheme: write mqtt:\/\/127.0.0.1:1883/,
    ],
    [['kms', '--port', 'eighty'], /--port must be a whole number from 0 to 65535, not "eighty"/],
    [['kms', 'start'], /unknown action "start"/],
    [['broker', '--wait-kms', 'forever'], /--wait-kms must be a whole number from 0 to 86400/],
    [['envelope', 'frob'], /unknown action "frob" \(expected seal or open\)/],
    [['envelope', 'seal', 'extra'], /unexpected argument extra/],
  ])('qkey %j exits 2 with our message', async (argv, message) => {
    const r = await run(...argv);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
    expect(r.err).not.toMatch(/ambiguous|positional|To specify|ERR_PARSE_ARGS/);
  });

  it("rewrites each of parseArgs' messages", () => {
    const message = (code: string, text: string) => parseArgsMessage(Object.assign(new Error(text), { code }));
    expect(
      message(
        'ERR_PARSE_ARGS_UNKNOWN_OPTION',
        "Unknown option '--x'. To specify a positional argument starting with a '-', place it at the end of the command after '--', as in '-- \"--x\"",
      ),
    ).toBe('unknown option --x');
    expect(message('ERR_PARSE_ARGS_INVALID_OPTION_VALUE', "Option '--up <value>' argument missing")).toBe(
      '--up needs a value',
    );
    expect(message('ERR_PARSE_ARGS_INVALID_OPTION_VALUE', "Option '--json' does not take an argument")).toBe(
      '--json takes no value',
    );
    expect(
      message(
        'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL',
        "Unexpected argument 'foo'. This command does not take positional arguments",
      ),
    ).toBe('unexpected argument foo');
  });
});

describe('against a key service', () => {
  let t: TestKms;
  const dir = tempDir('qkey-conventions-');
  beforeAll(async () => {
    t = await startTestKms();
    // 120 audited events: more than one page of the default 100.
    for (let i = 0; i < 120; i++) await t.admin.registerDevice(`conv-${String(i).padStart(3, '0')}`);
  });
  afterAll(async () => {
    await t.stop();
    removeDir(t.dataDir);
    removeDir(dir);
  });
  const admin = (...argv: string[]) => run('admin', '--kms', t.url, '--token', 'test-admin-token', ...argv);

  it('reads the audit log newest first, says there are older entries, and pages back with --before or --all', async () => {
    const first = await admin('audit', '--action', 'device.register');
    expect(first.code).toBe(0);
    const rows = first.out.split('\n').filter((l) => /^\d+ /.test(l));
    expect(rows).toHaveLength(100);
    expect(rows[0]).toMatch(/conv-119/);
    expect(rows[99]).toMatch(/conv-020/);
    const more = /\(there are older entries: --before (\d+), or --all\)/.exec(first.out);
    expect(more).not.toBeNull();
    const second = await admin('audit', '--action', 'device.register', '--before', more![1]!);
    const rows2 = second.out.split('\n').filter((l) => /^\d+ /.test(l));
    expect(rows2.map((r) => /conv-(\d+)/.exec(r)![1])).toEqual(
      Array.from({ length: 20 }, (_, i) => String(19 - i).padStart(3, '0')),
    );
    expect(second.out).not.toMatch(/there are older entries/);
    const all = await admin('--json', 'audit', '--action', 'device.register', '--all');
    const json = JSON.parse(all.out) as { entries: Array<{ device_id: string }>; next?: number };
    expect(json.entries).toHaveLength(120);
    expect(json.next).toBeUndefined();
    const oldest = await admin('audit', '--action', 'device.register', '--after', '0', '--limit', '5');
    expect(oldest.out.split('\n').filter((l) => /^\d+ /.test(l))[0]).toMatch(/conv-000/);
    expect(oldest.out).toMatch(/\(there are newer entries: --after \d+, or --all\)/);
  });

  it('a wrong admin token is refused in words of its own, naming where it came from', async () => {
    const wrong = await run('admin', '--kms', t.url, '--token', 'not-the-token', 'pools');
    expect(wrong.code).toBe(1);
    expect(wrong.err).toMatch(/admin token refused by the key service \(the token from --token/);
    process.env.QKEY_ADMIN_TOKEN = 'also-wrong';
    try {
      const fromEnv = await run('admin', '--kms', t.url, 'pools');
      expect(fromEnv.err).toMatch(/the token from QKEY_ADMIN_TOKEN/);
    } finally {
      delete process.env.QKEY_ADMIN_TOKEN;
    }
    const missing = await fetch(`${t.url}/api/v1/admin/pools`);
    expect(((await missing.json()) as { message: string }).message).toMatch(/admin token required/);
  });

  it('an unreachable key service exits 3 and names the cause', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    await new Promise((r) => closed.close(r));
    const r = await run('admin', '--kms', `http://127.0.0.1:${port}`, '--token', 'x', 'pools');
    expect(r.code).toBe(3);
    expect(r.err).toMatch(new RegExp(`key service unreachable at http://127.0.0.1:${port}: connect ECONNREFUSED`));
  });

  it('logs routine requests at debug: the default level shows none of them', async () => {
    await t.anon.request('GET', '/healthz');
    expect(t.logs()).not.toMatch(/"msg":"(incoming request|request completed)"/);
    const debug = await startTestKms({ logLevel: 'debug' });
    try {
      await debug.anon.request('GET', '/healthz');
      expect(debug.logs()).toMatch(/"level":20,[^\n]*"msg":"request completed"/);
    } finally {
      await debug.stop();
      removeDir(debug.dataDir);
    }
  });
});

describe('qkey kms --log-file', () => {
  it('writes the log to the file (0600), requests at debug, the stop too, and only the start line to stdout', async () => {
    const data = tempDir('qkey-kms-log-');
    const log = join(data, 'kms.log');
    try {
      expect((await run('kms', 'init', '--data', join(data, 'd'))).code).toBe(0);
      const kms = await spawnQkey(
        ['kms', '--data', join(data, 'd'), '--port', '0', '--log-file', log, '--log-level', 'debug'],
        /listening on (http:\S+)/,
      );
      await fetch(`${kms.ready}/healthz`);
      expect(await kms.stop()).toBe(0);
      expect(kms.output()).not.toMatch(/"msg"/);
      const text = readFileSync(log, 'utf8');
      expect(text).toMatch(/"level":20,[^\n]*"msg":"request completed"/);
      expect(text).toMatch(/"level":30,[^\n]*"signal":"SIGTERM"[^\n]*"msg":"stopping"/); // stops, as starts
      expect(statSync(log).mode & 0o777).toBe(0o600);
    } finally {
      removeDir(data);
    }
  }, 30_000);
});

describe('a closed pipe', () => {
  it('qkey --help | head -1 ends quietly', () => {
    const r = spawnSync(
      'bash',
      ['-c', `node ${JSON.stringify(QKEY_BIN)} --help | head -1; echo "status \${PIPESTATUS[0]}" >&2`],
      {
        encoding: 'utf8',
      },
    );
    expect(r.stdout).toBe('Usage: qkey <command> [options]\n');
    expect(r.stderr).toBe('status 0\n');
  });

  it('qkey demo | head stops the demo cleanly: status 0, no stack trace, no kms.lock left behind', () => {
    const data = tempDir('qkey-demo-pipe-');
    try {
      const demo = `node ${JSON.stringify(QKEY_BIN)} demo --data ${JSON.stringify(data)} --kms-port 0 --mqtt-port 0 --http-port 0 --devices 1 --duration 120`;
      const r = spawnSync('bash', ['-c', `${demo} | head -2; echo "status \${PIPESTATUS[0]}" >&2`], {
        encoding: 'utf8',
        timeout: 60_000,
        env: { ...process.env, NODE_NO_WARNINGS: '1' },
      });
      expect(r.stdout.split('\n')).toHaveLength(3);
      expect(r.stderr).toBe('status 0\n');
      expect(existsSync(join(data, 'kms.lock'))).toBe(false);
    } finally {
      removeDir(data);
    }
  }, 70_000);
});
