// `qkey broker` argument handling: usage errors exit 2, bad configuration values 1, each with a message, and
// nothing starts.
import { describe, expect, it } from 'vitest';
import { runQkey as run } from '../helpers/cli.js';

describe('qkey broker arguments', () => {
  it.each([
    [['--semi-space', 'big'], /--semi-space must be a whole number of MiB/],
    [['--semi-space=-5'], /--semi-space must be a whole number of MiB/],
    [['--port', '70000'], /--port must be a port number or "off"/],
    [['--tls-port', '8883'], /--tls-port needs --cert and --key/],
  ])('refuses %j', async (args, message) => {
    const r = await run('broker', ...args);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
  });

  it('refuses a semi-space outside 0..1024 MiB as a configuration error, before starting anything', async () => {
    const r = await run('broker', '--semi-space', '5000');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/semiSpaceMiB must be an integer from 0 to 1024/);
  });

  it('lists --semi-space in its help', async () => {
    const r = await run('broker', '--help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/--semi-space <MiB>/);
  });
});
