// Writes the browser client (browser/app-session-client.ts, compiled in dist/) with every module it imports into one
// directory a web server serves as static files, plus the import map a page puts in a <script type="importmap">.
//
// Not a bundler: the files are copied byte for byte (the ones the page loads are the ones tests ran), and the import
// map resolves the bare names (mqtt, sm-crypto-v2, @noble/*) to their browser ES module builds. One mapping is not a
// package: protocol/backend.js (node:crypto and the native addon) maps to browser/backend.js, the pure-JavaScript SM4
// and SM3, so protocol/envelope.js runs in the page unchanged.
//
//   node scripts/build-browser-client.mjs [--out dist/browser-client] [--base /qkey/]
// --base is the URL path the directory is served under (the import map's addresses start with it).
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = resolve(import.meta.dirname, '..');
const DIST = join(ROOT, 'dist');
const ENTRY = join(DIST, 'browser', 'app-session-client.js');
const NODE_BACKEND = join(DIST, 'protocol', 'backend.js');
const BROWSER_BACKEND = join(DIST, 'browser', 'backend.js');
/** Packages whose Node entry is not their browser ES module build. */
const BROWSER_ENTRIES = {
  mqtt: 'dist/mqtt.esm.js',
  'sm-crypto-v2': 'dist/index.mjs',
};

/** The module specifiers a file imports or re-exports (tsc's and the packages' ES module output). */
function specifiers(source) {
  const out = new Set();
  for (const m of source.matchAll(/(?:^|[\s;])(?:import|export)\s*(?:[^'"();]*?\sfrom\s*)?['"]([^'"]+)['"]/g))
    out.add(m[1]);
  for (const m of source.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) out.add(m[1]);
  return [...out];
}

/** A package's folder as Node finds it: node_modules here or in a folder above (an installed package's are hoisted). */
function packageDir(name) {
  for (let dir = ROOT; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dirname(dir) === dir) throw new Error(`package ${name} is not installed`);
  }
}

/** Where each file goes in the output: dist files keep their place, a package's go to vendor/<package>/. */
const places = new Map();
/** The package folder and name each vendored file belongs to, for the files it imports by relative paths. */
const packageOf = new Map();

function place(file, pkg) {
  if (places.has(file)) return;
  if (pkg) {
    packageOf.set(file, pkg);
    places.set(file, join('vendor', pkg.name, relative(pkg.dir, file)));
  } else {
    if (!file.startsWith(DIST + '/')) throw new Error(`${file} is outside dist/`);
    places.set(file, relative(DIST, file));
  }
}

/** A bare specifier's file: the browser build above, or the package's "exports" entry under the import condition. */
function resolveBare(spec) {
  if (spec.startsWith('node:')) throw new Error(`${spec} cannot load in a browser`);
  const parts = spec.split('/');
  const name = spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
  const sub = spec.slice(name.length);
  const dir = packageDir(name);
  let target = sub === '' ? BROWSER_ENTRIES[name] : undefined;
  if (target === undefined) {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    const entry = pkg.exports?.[`.${sub}`] ?? pkg.exports?.[`.${sub}.js`];
    target = typeof entry === 'string' ? entry : (entry?.import ?? entry?.default);
  }
  if (typeof target !== 'string') throw new Error(`no ES module export for ${spec}`);
  const file = join(dir, target);
  place(file, { dir, name });
  return file;
}

export function buildBrowserClient(outDir, base) {
  if (!existsSync(ENTRY)) throw new Error(`${relative(ROOT, ENTRY)} is missing: run npm run build first`);
  const imports = {};
  const queue = [ENTRY, BROWSER_BACKEND];
  for (const f of queue) place(f);
  const done = new Set();
  while (queue.length > 0) {
    const file = queue.pop();
    if (done.has(file)) continue;
    done.add(file);
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      let target;
      if (spec.startsWith('.')) {
        target = resolve(dirname(file), spec);
        if (target === NODE_BACKEND) continue; // mapped to the browser backend below
        place(target, packageOf.get(file));
      } else {
        target = resolveBare(spec);
        imports[spec] = base + places.get(target);
      }
      queue.push(target);
    }
  }
  place(NODE_BACKEND);
  imports[base + places.get(NODE_BACKEND)] = base + places.get(BROWSER_BACKEND);
  // The folder is replaced whole: only an empty one or one this script wrote (it holds importmap.json), never a
  // folder of other files named by mistake.
  if (existsSync(outDir) && readdirSync(outDir).length > 0 && !existsSync(join(outDir, 'importmap.json')))
    throw new Error(`${outDir} is not empty and not a browser-client folder: give an empty or new folder`);
  rmSync(outDir, { recursive: true, force: true });
  for (const file of done) {
    const to = join(outDir, places.get(file));
    mkdirSync(dirname(to), { recursive: true });
    copyFileSync(file, to);
  }
  const sorted = Object.fromEntries(Object.entries(imports).sort(([x], [y]) => x.localeCompare(y)));
  writeFileSync(join(outDir, 'importmap.json'), `${JSON.stringify({ imports: sorted }, null, 2)}\n`);
  return { files: [...done].map((f) => places.get(f)).sort(), importMap: { imports: sorted } };
}

if (process.argv[1] && resolve(process.argv[1]) === import.meta.filename) {
  try {
    const { values } = parseArgs({ options: { out: { type: 'string' }, base: { type: 'string' } } });
    const base = values.base ?? '/qkey/';
    if (!/^(\/|https:\/\/)[^\s"'<>]*\/$/.test(base)) throw new Error('--base must be a path or https URL ending in /');
    const outDir = resolve(values.out ?? join(DIST, 'browser-client'));
    const { files } = buildBrowserClient(outDir, base);
    console.log(`${files.length} files and importmap.json in ${relative(process.cwd(), outDir) || '.'} (base ${base})`);
  } catch (err) {
    console.error(`build-browser-client: ${err.message}`);
    process.exitCode = 1;
  }
}
