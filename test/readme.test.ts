// README.md's shell steps, read from README.md itself and run as a new user pastes them: in a fresh folder, one
// bash session, `npx qkey` meaning this checkout's built CLI. Ports are free ones instead of 7070/1883/9090 (the
// only change to the text), and after each line that starts something in the background the harness waits as a
// user would: for the key service's or the broker's port, or for a new client to be connected to the broker.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { removeDir, tempDir } from './helpers/kms.js';
import { QKEY_BIN } from './helpers/process.js';
import { freePort } from './helpers/ports.js';

interface Block {
  heading: string;
  lang: string;
  text: string;
}

/** Every fenced code block of a Markdown text, with the heading it is under. */
export function codeBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  let heading = '';
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const h = /^#{1,6} (.*)$/.exec(line);
    if (h) heading = h[1]!.trim();
    const fence = /^```(\w*)\s*$/.exec(line);
    if (!fence) continue;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]!); i++) body.push(lines[i]!);
    blocks.push({ heading, lang: fence[1]!, text: body.join('\n') });
  }
  return blocks;
}

/** The shell blocks run here, and why the others are not. */
const RUN = ['Provisioning a device', 'Policies', 'Connecting'];
const NOT_RUN: Record<string, string> = {
  'Quick start': 'npm ci / npm start / npm test: CI runs them itself',
  'Several brokers': 'fixed ports and a Redis daemon: test/e2e/multi-broker.test.ts runs the same setup on free ports',
  Configuration: 'mutual TLS needs a TLS key service and certificates: test/key-service covers it',
  'Applications in a browser':
    'builds dist/ (minutes on a busy machine) and writes a folder: test/browser/client.test.ts runs the same script and serves its output to Chromium',
};

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
const shellBlocks = codeBlocks(readme).filter((b) => b.lang === 'sh');

const dir = tempDir('qkey-readme-');
afterAll(() => removeDir(dir));

it('every shell block of the README is either run here or has a stated reason not to be', () => {
  const headings = [...new Set(shellBlocks.map((b) => b.heading))];
  for (const h of headings) expect(RUN.includes(h) || h in NOT_RUN, h).toBe(true);
  for (const h of RUN) expect(headings).toContain(h);
  expect(readme).not.toMatch(/=<[a-z-]+>/); // a placeholder assigned in a shell line is a syntax error when pasted
});

it('the provisioning and connecting steps work pasted into a fresh folder', async () => {
  const [kms, mqtt, http] = [await freePort(), await freePort(), await freePort()];
  writeFileSync(join(dir, 'broker.json'), JSON.stringify({ http: { port: http } }));
  const steps = RUN.flatMap((h) => shellBlocks.filter((b) => b.heading === h))
    .map((b) => b.text)
    .join('\n')
    .replace(/127\.0\.0\.1:7070/g, `127.0.0.1:${kms}`)
    .replace(/-p 1883\b/g, `-p ${mqtt}`)
    .replace(/\\\n/g, ''); // a continued line is one command
  const script = [
    'set -eo pipefail',
    `export QKEY_KMS_PORT=${kms} QKEY_KMS_URL=http://127.0.0.1:${kms} QKEY_BROKER_PORT=${mqtt}`,
    `export QKEY_BROKER_URL=mqtt://127.0.0.1:${mqtt} QKEY_BROKER_CONFIG=${join(dir, 'broker.json')}`,
    // `npx qkey` is this checkout's built CLI (npx would find it in the checkout; this folder is elsewhere).
    `npx() { if [ "$1" = qkey ]; then shift; ${JSON.stringify(process.execPath)} ${JSON.stringify(QKEY_BIN)} "$@"; else command npx "$@"; fi; }`,
    'port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }',
    `clients() { curl -s http://127.0.0.1:${http}/metrics | awk '/^broker_connected_clients/ {n += $2} END {print n + 0}'; }`,
    // What a user waits for before the next line: the service's port, or one more connected client.
    '__ready() {',
    '  for i in $(seq 300); do',
    '    case "$1" in',
    `      *"qkey kms"*) port_open ${kms} && return 0 ;;`,
    `      *"qkey broker"*) port_open ${mqtt} && port_open ${http} && return 0 ;;`,
    '      *) [ "$(clients)" -gt "$2" ] && sleep 0.3 && return 0 ;;',
    '    esac',
    '    sleep 0.1',
    '  done',
    '  echo "__ready: gave up on: $1" >&2; return 1',
    '}',
    ...steps.split('\n').flatMap((line) => {
      if (!/&\s*(#.*)?$/.test(line.replace(/&&/g, ''))) return [line];
      return [`__before=$(clients 2>/dev/null || echo 0)`, line, `__ready ${JSON.stringify(line)} "$__before"`];
    }),
    'echo __STEPS_DONE__',
    'wait',
  ].join('\n');
  writeFileSync(join(dir, 'steps.sh'), script);
  const proc = spawn('bash', [join(dir, 'steps.sh')], { cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const expected = [
    /qkey kms init: created a new key service in \S*\/data:/,
    /qkey broker listening: mqtt mqtt:\/\/127\.0\.0\.1:\d+/,
    /filled dev-0001: 1000 uplink and 1000 downlink keys/,
    /pool {8}up 1000, down 1000/,
    /token for dev-0001, valid \d+ s/,
    /devices\/dev-0001\/up\/telemetry \{"t":21\.5\}/, // printed by mosquitto_sub, as the README says
    /devices\/dev-0001\/down\/cmd reboot/, // printed by qkey device listen
    /__STEPS_DONE__/,
  ];
  try {
    const until = Date.now() + 90_000;
    while (!expected.every((re) => re.test(out)) && proc.exitCode === null && Date.now() < until)
      await new Promise((r) => setTimeout(r, 200));
    for (const re of expected) expect(out, `exit ${proc.exitCode}\n${out}`).toMatch(re);
    expect(out).not.toMatch(/command not found|syntax error|not a valid identifier|Connection refused|Error:/);
  } finally {
    if (proc.exitCode === null) process.kill(-proc.pid!, 'SIGTERM');
    await exited;
  }
}, 120_000);
