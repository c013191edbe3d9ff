// A command's watch for Ctrl-C and SIGTERM: it settles on the first, and leaves no handler behind once disposed.
import { describe, expect, it } from 'vitest';
import { stopRequested } from '../../cli/io.js';

describe('stopRequested', () => {
  it('removes its handlers when the command ends by itself, so Ctrl-C goes back to Node', () => {
    const before = [process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')];
    const watch = stopRequested();
    expect([process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')]).toEqual(before.map((n) => n + 1));
    watch.dispose();
    watch.dispose();
    expect([process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')]).toEqual(before);
  });

  it('settles with the signal, and removes its handlers then too', async () => {
    const before = process.listenerCount('SIGTERM');
    const watch = stopRequested();
    process.emit('SIGTERM', 'SIGTERM');
    await expect(watch.stopped).resolves.toBe('SIGTERM');
    expect(process.listenerCount('SIGTERM')).toBe(before);
  });
});
