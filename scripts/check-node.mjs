// Refuses an unsupported Node.js with a message that says what to do; the supported lines are package.json's engines.
// Plain JavaScript with no dependencies: it runs before `npm ci` has built anything (npm's preinstall).
import { readFileSync } from 'node:fs';

const packageJson = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

/** `engines.node` is a list of `^MAJOR.MINOR.PATCH` alternatives, one per supported LTS line. */
export function supportedLines(range = packageJson.engines.node) {
  return range.split('||').map((part) => {
    const m = /^\s*\^(\d+)\.(\d+)\.(\d+)\s*$/.exec(part);
    if (!m) throw new Error(`check-node: engines.node must be ^X.Y.Z alternatives, not ${JSON.stringify(part)}`);
    return m.slice(1, 4).map(Number);
  });
}

/** null when `version` (such as process.version) is on a supported line, otherwise what to tell the user. */
export function unsupportedNodeMessage(version = process.version) {
  const [major, minor, patch] = version.replace(/^v/, '').split('.').map(Number);
  const lines = supportedLines();
  const ok = lines.some(([M, m, p]) => major === M && (minor > m || (minor === m && patch >= p)));
  if (ok) return null;
  const wanted = lines.map(([M, m, p]) => `${M} (>= ${M}.${m}.${p})`).join(' or ');
  const newest = Math.max(...lines.map(([M]) => M));
  return [
    `qkey-mqtt needs Node.js ${wanted}; this is Node.js ${version}.`,
    `Install a supported Node.js with your usual tool (nvm, fnm, your OS packages), or from the npm registry:`,
    `  source scripts/use-node.sh ${newest}    # installs node@${newest} into ~/.cache/qkey-toolchain and puts it first on PATH`,
    `then run the command again (after \`rm -rf node_modules && npm ci\` if it was installed with another Node).`,
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const message = unsupportedNodeMessage();
  if (message) {
    console.error(message);
    process.exit(1);
  }
}
