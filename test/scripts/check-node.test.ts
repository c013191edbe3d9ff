// The Node.js version gate that `npm ci`, `npm start`, `npm test` and the qkey bin run first.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { supportedLines, unsupportedNodeMessage } from '../../scripts/check-node.mjs';

const engines = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    engines: { node: string };
  }
).engines.node;

describe('check-node', () => {
  it('reads the supported LTS lines from package.json engines', () => {
    expect(supportedLines()).toEqual(supportedLines(engines));
    expect(supportedLines().map(([major]) => major)).toEqual([22, 24]);
  });

  it('accepts every release of a supported line from its minimum on', () => {
    for (const v of ['v22.12.0', 'v22.12.1', 'v22.23.3', 'v24.0.0', 'v24.21.0', '24.3.1'])
      expect(unsupportedNodeMessage(v), v).toBeNull();
  });

  it('refuses older, odd and newer lines with advice naming the version and what to do', () => {
    for (const v of ['v20.19.0', 'v22.11.9', 'v23.11.0', 'v25.0.0', 'v26.1.0', 'v18.20.0']) {
      const message = unsupportedNodeMessage(v);
      expect(message, v).toContain(`this is Node.js ${v}`);
      expect(message).toContain('22 (>= 22.12.0) or 24 (>= 24.0.0)');
      expect(message).toContain('source scripts/use-node.sh 24');
    }
  });

  it('refuses an engines range it cannot read rather than guessing', () => {
    expect(() => supportedLines('>=22')).toThrow(/\^X\.Y\.Z alternatives/);
  });
});
