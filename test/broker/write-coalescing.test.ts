// coalesceWrites: writes made in one event-loop turn reach the underlying stream in one writev, in order.
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { coalesceWrites } from '../../broker/write-coalescing.js';

function recorder() {
  const calls: string[][] = [];
  const stream = new Writable({
    writev(chunks, cb) {
      calls.push(chunks.map((c) => String(c.chunk)));
      cb();
    },
    write(chunk: Buffer, _enc, cb) {
      calls.push([String(chunk)]);
      cb();
    },
  });
  return { stream, calls };
}

const turn = () => new Promise((r) => setImmediate(r));

describe('coalesceWrites', () => {
  it('sends the writes of one turn in one call, in order', async () => {
    const { stream, calls } = recorder();
    coalesceWrites(stream);
    for (let i = 0; i < 100; i++) stream.write(String(i));
    expect(calls).toEqual([]); // nothing leaves during the turn
    await turn();
    expect(calls).toEqual([Array.from({ length: 100 }, (_, i) => String(i))]);
  });

  it('starts a new batch in the next turn', async () => {
    const { stream, calls } = recorder();
    coalesceWrites(stream);
    stream.write('a');
    stream.write('b');
    await turn();
    stream.write('c');
    await turn();
    expect(calls).toEqual([['a', 'b'], ['c']]);
  });

  it('keeps working with the cork and nextTick uncork that mqtt-packet does per packet', async () => {
    const { stream, calls } = recorder();
    coalesceWrites(stream);
    for (const packet of ['p1', 'p2', 'p3']) {
      stream.cork();
      stream.write(`${packet}-header`);
      stream.write(`${packet}-body`);
      process.nextTick(() => stream.uncork());
    }
    await turn();
    expect(calls.flat()).toEqual(['p1-header', 'p1-body', 'p2-header', 'p2-body', 'p3-header', 'p3-body']);
    expect(calls).toHaveLength(1);
  });

  it('reports backpressure only past its limit, not at the 16 KiB high-water mark that corking reaches', async () => {
    const { stream } = recorder();
    coalesceWrites(stream, 256 * 1024);
    const kib = Buffer.alloc(1024);
    const results = Array.from({ length: 300 }, () => stream.write(kib));
    expect(results.slice(0, 255).every(Boolean)).toBe(true); // 16 KiB and beyond, still fine
    expect(results.slice(256).some(Boolean)).toBe(false); // past 256 KiB waiting: back off
    await turn();
    expect(stream.write(kib)).toBe(true);
  });

  it('end() flushes what was written in the same turn', async () => {
    const { stream, calls } = recorder();
    coalesceWrites(stream);
    stream.write('last words');
    const finished = new Promise((r) => stream.on('finish', r));
    stream.end();
    await finished;
    expect(calls.flat()).toEqual(['last words']);
  });
});
