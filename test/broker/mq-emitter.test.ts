// The bounded emitter: a long queue whose messages complete synchronously drains without overflowing the stack,
// in emit order, and the unguarded mqemitter really does overflow on the same flood (so this test can fail).
import { spawnSync } from 'node:child_process';
import mqemitter from 'mqemitter';
import { describe, expect, it } from 'vitest';
import { createBoundedEmitter, Fifo } from '../../broker/mq-emitter.js';

/** Fills the emitter's concurrency with slow messages, then queues `n` messages nobody (or a sync handler) takes. */
function flood(mq: mqemitter.MQEmitter, concurrency: number, n: number, onDone: (i: number) => void): void {
  mq.on('slow', (_m, done) => setImmediate(done));
  for (let i = 0; i < concurrency; i++) mq.emit({ topic: 'slow' });
  for (let i = 0; i < n; i++) mq.emit({ topic: `nobody/${i}`, i }, () => onDone(i));
}

const FLOOD = 200_000;

describe('Fifo', () => {
  it('behaves as an array used with push and shift, across compactions', () => {
    const fifo = new Fifo<number>();
    const model: number[] = [];
    let next = 0;
    // Bursts of pushes and shifts of varying size, crossing the 1024-element compaction point many times.
    for (let round = 0; round < 200; round++) {
      const pushes = (round * 37) % 3000;
      const shifts = (round * 53) % 3100;
      for (let i = 0; i < pushes; i++) {
        fifo.push(next);
        model.push(next++);
      }
      for (let i = 0; i < shifts; i++) expect(fifo.shift()).toBe(model.shift());
      expect(fifo.length).toBe(model.length);
    }
  });
});

describe('createBoundedEmitter', () => {
  it('control: plain mqemitter overflows the stack draining the same flood', () => {
    const script = `
      const mqemitter = require('mqemitter');
      const mq = mqemitter({ concurrency: 100 });
      mq.on('slow', (_m, done) => setImmediate(done));
      for (let i = 0; i < 100; i++) mq.emit({ topic: 'slow' });
      for (let i = 0; i < ${FLOOD}; i++) mq.emit({ topic: 'nobody/' + i });`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('Maximum call stack size exceeded');
  });

  it('drains a queue of synchronously completing messages without overflowing the stack', async () => {
    const mq = createBoundedEmitter({ concurrency: 100 });
    const completed: number[] = [];
    const all = new Promise<void>((resolve) => {
      flood(mq, 100, FLOOD, (i) => {
        completed.push(i);
        if (completed.length === FLOOD) resolve();
      });
    });
    await all;
    await new Promise((r) => setImmediate(r));
    // Every message completed, in the order it was emitted, and every concurrency slot came back.
    expect(completed.length).toBe(FLOOD);
    expect(completed.every((v, i) => v === i)).toBe(true);
    expect(mq.current).toBe(0);
  });

  it('delivers to subscribers in emit order when messages mix slow and synchronous handlers', async () => {
    const mq = createBoundedEmitter({ concurrency: 4, maxDepth: 3 });
    const seen: number[] = [];
    mq.on('t/+', (m, done) => {
      seen.push(m.i as number);
      // Every seventh message is slow, so the queue fills, drains, backlogs and fills again.
      if ((m.i as number) % 7 === 0) setImmediate(done);
      else done();
    });
    const n = 5000;
    await new Promise<void>((resolve) => {
      let acked = 0;
      for (let i = 0; i < n; i++) mq.emit({ topic: `t/${i % 3}`, i }, () => ++acked === n && resolve());
    });
    expect(seen).toEqual(Array.from({ length: n }, (_, i) => i));
  });

  it('keeps emits made while the backlog waits behind it', async () => {
    const mq = createBoundedEmitter({ concurrency: 1, maxDepth: 1 });
    const seen: number[] = [];
    mq.on('t', (m, done) => {
      seen.push(m.i as number);
      done();
    });
    mq.on('slow', (_m, done) => setImmediate(done));
    mq.emit({ topic: 'slow' });
    for (let i = 0; i < 10; i++) mq.emit({ topic: 't', i });
    // Some of those now sit in the backlog; these arrive before it drains and must come after them.
    await new Promise((r) => setImmediate(r));
    for (let i = 10; i < 20; i++) mq.emit({ topic: 't', i });
    await new Promise((r) => setTimeout(r, 50));
    expect(seen).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });
});
