// `qkey envelope seal|open`: through the callable API and through the built binary, including bad input.
import { execFileSync, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runQkey as run } from '../helpers/cli.js';
import { QKEY_BIN } from '../helpers/process.js';
import { loadVectors } from '../helpers/vectors.js';

const v = loadVectors<Record<string, string | number>>('qkey-envelope.json').vectors[0]!;
const common = [
  '--key',
  String(v.key),
  '--device',
  String(v.deviceId),
  '--topic',
  String(v.topic),
  '--direction',
  String(v.direction),
];

describe('qkey envelope', () => {
  it('seal prints the worked vector envelope and open gives the payload back', async () => {
    const sealed = await run(
      'envelope',
      'seal',
      ...common,
      '--key-index',
      String(v.keyIndex),
      '--seq',
      String(v.seq),
      '--payload-hex',
      String(v.payload),
    );
    expect(sealed).toMatchObject({ code: 0, out: v.envelope });
    const opened = await run('envelope', 'open', ...common, '--envelope-hex', String(v.envelope));
    expect(opened).toMatchObject({ code: 0, out: v.payload });
  });

  it('a tampered, truncated or replaced-context envelope exits 1 with a one-line reason naming the code', async () => {
    const env = String(v.envelope);
    const tampered = env.slice(0, -2) + (env.endsWith('00') ? '01' : '00');
    for (const [envelopeHex, code] of [
      [tampered, 'PROTO_ERR_TAG'],
      [env.slice(0, 40), 'PROTO_ERR_TRUNCATED'],
      [`02${env.slice(2)}`, 'PROTO_ERR_VERSION'],
      [`0107${env.slice(4)}`, 'PROTO_ERR_SUITE'],
    ] as const) {
      const r = await run('envelope', 'open', ...common, '--envelope-hex', envelopeHex);
      expect(r.code).toBe(1);
      expect(r.err.split('\n')).toHaveLength(1);
      expect(r.err).toContain(code);
      expect(r.err).not.toContain(String(v.key));
    }
    const wrongKey = await run(
      'envelope',
      'open',
      ...common.map((a) => (a === v.key ? 'ff'.repeat(16) : a)),
      '--envelope-hex',
      env,
    );
    expect(wrongKey.err).toMatch(/PROTO_ERR_TAG/);
  });

  it('usage mistakes exit 2 and point at --help', async () => {
    for (const argv of [
      ['envelope', 'seal', ...common, '--seq', '1', '--payload-hex', '00'],
      ['envelope', 'seal', ...common, '--key-index', 'x', '--seq', '1', '--payload-hex', '00'],
      ['envelope', 'open', ...common, '--envelope-hex', 'abc'],
      ['envelope', 'open', '--key', '00', '--device', 'd', '--topic', 't', '--direction', 'up', '--envelope-hex', '00'],
      ['envelope', 'open', ...common, '--direction', 'sideways', '--envelope-hex', '00'],
      ['envelope', 'frobnicate', ...common],
      ['envelope', 'seal', '--no-such-flag'],
    ]) {
      const r = await run(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toContain('--help');
    }
  });

  it('an empty payload is refused with PROTO_ERR_EMPTY, an unknown suite with PROTO_ERR_SUITE', async () => {
    const r = await run('envelope', 'seal', ...common, '--key-index', '1', '--seq', '1', '--payload-hex', '');
    expect(r.code).toBe(1);
    expect(r.err).toContain('PROTO_ERR_EMPTY');
    const r2 = await run(
      'envelope',
      'seal',
      ...common,
      '--key-index',
      '1',
      '--seq',
      '1',
      '--payload-hex',
      '00',
      '--suite',
      'nope',
    );
    expect(r2).toMatchObject({ code: 1 });
    expect(r2.err).toContain('PROTO_ERR_SUITE');
  });

  it('the built qkey binary behaves the same (exit codes and output)', () => {
    const out = execFileSync(
      process.execPath,
      [QKEY_BIN, 'envelope', 'open', ...common, '--envelope-hex', String(v.envelope)],
      { encoding: 'utf8' },
    );
    expect(out.trim()).toBe(v.payload);
    const bad = spawnSync(
      process.execPath,
      [QKEY_BIN, 'envelope', 'open', ...common, '--envelope-hex', String(v.envelope).slice(0, 30)],
      { encoding: 'utf8' },
    );
    expect(bad.status).toBe(1);
    expect(bad.stderr.trim()).toMatch(/^qkey envelope open: PROTO_ERR_TRUNCATED: /);
  });
});
