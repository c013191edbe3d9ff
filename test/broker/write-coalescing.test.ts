// coalesceWrites: writes made in one event-loop turn reach the underlying stream in one writev, in order, and one
// flush per turn serves every stream.
import { Writable } from 'node:stream';
import { generate, writeToStream } from 'mqtt-packet';
import { describe, expect, it, vi } from 'vitest';
import { coalesceWrites } from '../../broker/write-coalescing.js';

function recorder() {
  const calls: string[][] = [];
  const stream = new Writable({
    writev(chunks, cb) {
      calls.push(chunks.map((c) => (Buffer.isBuffer(c.chunk) ? c.chunk.toString('latin1') : String(c.chunk))));
      cb();
    },
    write(chunk: Buffer, _enc, cb) {
      calls.push([Buffer.isBuffer(chunk) ? chunk.toString('latin1') : String(chunk)]);
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

  it('flushes what a setImmediate callback wrote at the start of the next turn, before its I/O', async () => {
    // Aedes writes deliveries from setImmediate callbacks. An immediate queued there would run only after the next
    // turn's poll phase; the 0 ms timer runs before it. Timers due together run in the order they were set.
    const { stream, calls } = recorder();
    coalesceWrites(stream);
    const seenByTimer = await new Promise<string[][]>((resolve) =>
      setImmediate(() => {
        stream.write('delivery');
        setTimeout(() => resolve(calls.map((c) => [...c])), 0);
        const until = performance.now() + 3;
        while (performance.now() < until); // make both 0 ms timers due when the next turn begins
      }),
    );
    expect(seenByTimer).toEqual([['delivery']]);
  });

  it('flushes every stream written in a turn with one immediate and one timer', async () => {
    const streams = Array.from({ length: 50 }, () => recorder());
    for (const { stream } of streams) coalesceWrites(stream);
    vi.useFakeTimers({ toFake: ['setImmediate', 'setTimeout', 'clearImmediate', 'clearTimeout'] });
    try {
      for (const { stream } of streams) stream.write('ack');
      expect(vi.getTimerCount()).toBe(2);
      vi.runOnlyPendingTimers();
    } finally {
      vi.useRealTimers();
    }
    expect(streams.map((s) => s.calls)).toEqual(streams.map(() => [['ack']]));
  });

  it('takes over the per-packet cork that mqtt-packet would add: one call per turn, no tick per packet', async () => {
    const { stream, calls } = recorder();
    coalesceWrites(stream);
    const ticks = { queued: 0 };
    const nextTick = process.nextTick;
    process.nextTick = ((...args: Parameters<typeof nextTick>) => (
      ticks.queued++,
      nextTick(...args)
    )) as typeof nextTick;
    try {
      // What mqtt-packet's writeToStream does for every packet it writes.
      for (const packet of ['p1', 'p2', 'p3']) {
        const s = stream as Writable & { cork?: () => void };
        if (s.cork) {
          s.cork();
          process.nextTick(() => stream.uncork());
        }
        stream.write(`${packet}-header`);
        stream.write(`${packet}-body`);
      }
    } finally {
      process.nextTick = nextTick;
    }
    expect(ticks.queued).toBe(0);
    await turn();
    expect(calls).toEqual([['p1-header', 'p1-body', 'p2-header', 'p2-body', 'p3-header', 'p3-body']]);
  });

  it('writes real MQTT packets through mqtt-packet intact', async () => {
    const { stream, calls } = recorder();
    coalesceWrites(stream);
    const packet = {
      cmd: 'publish',
      topic: 't',
      payload: Buffer.from('hi'),
      qos: 0,
      dup: false,
      retain: false,
    } as const;
    writeToStream(packet, stream);
    writeToStream(packet, stream);
    await turn();
    expect(Buffer.concat(calls.flat().map((c) => Buffer.from(c, 'latin1')))).toEqual(
      Buffer.concat([generate(packet), generate(packet)]),
    );
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
