// The request logger made lazily: nothing is built or written below the level, and what is written is what a pino
// child bound to the request id writes, through fastify as the key service configures it.
import { Writable } from 'node:stream';
import Fastify from 'fastify';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { lazyRequestLogger } from '../../key-service/request-logger.js';

function capture() {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { lines, stream };
}

describe('lazyRequestLogger', () => {
  it('writes at enabled levels with the bindings a child would carry, and builds no child below them', () => {
    const { lines, stream } = capture();
    const parent = pino({ level: 'warn' }, stream);
    let children = 0;
    const counting = Object.assign(Object.create(parent) as typeof parent, {
      child: (...args: Parameters<typeof parent.child>) => {
        children++;
        return parent.child(...args);
      },
    });
    const log = lazyRequestLogger(counting, { reqId: 'req-7' }, {});
    log.debug({ a: 1 }, 'not written');
    log.info('not written either');
    log.trace('nor this');
    expect(children).toBe(0);
    expect(log.level).toBe('warn');
    log.warn({ device: 'd1' }, 'written');
    log.error('also written');
    expect(children).toBe(1);
    expect(lines.map((l) => [l.level, l.reqId, l.msg, l.device])).toEqual([
      [40, 'req-7', 'written', 'd1'],
      [50, 'req-7', 'also written', undefined],
    ]);
  });

  it('gives a real child at once when the route asks for child options (its own level)', () => {
    const { lines, stream } = capture();
    const parent = pino({ level: 'warn' }, stream);
    const log = lazyRequestLogger(parent, { reqId: 'req-8' }, { level: 'debug' });
    log.debug('route-level debug');
    expect(lines.map((l) => [l.reqId, l.msg])).toEqual([['req-8', 'route-level debug']]);
  });

  it('serves fastify: request logs carry the request id, quiet requests write nothing', async () => {
    const { lines, stream } = capture();
    const app = Fastify({ logger: { level: 'warn', stream }, childLoggerFactory: lazyRequestLogger });
    app.get('/quiet', async (req) => {
      req.log.info('below the level');
      return { ok: true };
    });
    app.get('/loud', async (req) => {
      req.log.warn({ what: 'x' }, 'worth a line');
      return { ok: true };
    });
    expect((await app.inject({ method: 'GET', url: '/quiet' })).statusCode).toBe(200);
    expect(lines).toEqual([]);
    const res = await app.inject({ method: 'GET', url: '/loud' });
    expect(res.statusCode).toBe(200);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, msg: 'worth a line', what: 'x' });
    expect(lines[0]!.reqId).toEqual(expect.any(String));
    await app.close();
  });
});
