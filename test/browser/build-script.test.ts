// scripts/build-browser-client.mjs: the folder it writes loads in a page with nothing else (every bare import in the
// import map, no node: module, the Node backend mapped to the browser's), and it never replaces a folder of other
// files or accepts a base the import map could not use.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeDir, tempDir } from '../helpers/kms.js';

const SCRIPT = join(import.meta.dirname, '..', '..', 'scripts', 'build-browser-client.mjs');
const dir = tempDir('qkey-browser-build-');
afterAll(() => removeDir(dir));

const build = (...args: string[]) => spawnSync(process.execPath, [SCRIPT, ...args], { encoding: 'utf8' });

describe('build-browser-client', () => {
  it('writes a folder whose every import resolves inside it through the import map', () => {
    const out = join(dir, 'client');
    const r = build('--out', out, '--base', '/static/qkey/');
    expect(r.status, r.stderr).toBe(0);
    const map = JSON.parse(readFileSync(join(out, 'importmap.json'), 'utf8')) as { imports: Record<string, string> };
    expect(map.imports['/static/qkey/protocol/backend.js']).toBe('/static/qkey/browser/backend.js');
    expect(existsSync(join(out, 'protocol', 'backend.js'))).toBe(false);
    const files = r.stdout.match(/^(\d+) files/)![1];
    expect(Number(files)).toBeGreaterThan(10);
    for (const target of Object.values(map.imports)) {
      expect(target.startsWith('/static/qkey/')).toBe(true);
      expect(existsSync(join(out, target.slice('/static/qkey/'.length))), target).toBe(true);
    }
    for (const f of ['browser/app-session-client.js', 'protocol/envelope.js', 'vendor/sm-crypto-v2/dist/index.mjs']) {
      const source = readFileSync(join(out, f), 'utf8');
      for (const [, spec] of source.matchAll(/\bfrom\s*['"]([^'"]+)['"]/g)) {
        expect(spec!.startsWith('node:'), `${f} imports ${spec}`).toBe(false);
        if (!spec!.startsWith('.')) expect(map.imports[spec!], `${f} imports ${spec}`).toBeDefined();
        else if (!(join(f, '..', spec!) === 'protocol/backend.js'))
          expect(existsSync(join(out, f, '..', spec!)), `${f} imports ${spec}`).toBe(true);
      }
    }
  });

  it('refuses a folder of other files, and leaves it as it was', () => {
    const mine = join(dir, 'site');
    mkdirSync(mine);
    writeFileSync(join(mine, 'index.html'), 'mine');
    const r = build('--out', mine);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/is not empty and not a browser-client folder/);
    expect(readFileSync(join(mine, 'index.html'), 'utf8')).toBe('mine');
  });

  it.each(['qkey/', '/qkey', 'http://cdn.example/qkey/', '/q key/', 'javascript:alert(1)//'])(
    'refuses the base %j',
    (base) => {
      const r = build('--out', join(dir, 'unused'), '--base', base);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/--base must be a path or https URL ending in \//);
    },
  );
});
