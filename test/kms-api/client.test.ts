// KmsClient against peers that misbehave: no answer at all, a connection cut mid-response, a refused port.
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { KmsClient, KmsUnreachableError } from '../../kms-api/client.js';

let server: Server | undefined;
afterEach(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())));

async function peer(onConnection: (socket: import('node:net').Socket) => void): Promise<string> {
  server = createServer(onConnection);
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

describe('KmsClient', () => {
  it('gives up on a peer that accepts and never answers, with a clear error, after timeoutMs', async () => {
    const open: import('node:net').Socket[] = [];
    const url = await peer((s) => open.push(s));
    const started = Date.now();
    const err = await new KmsClient(url, { timeoutMs: 300 }).status('dev-1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KmsUnreachableError);
    expect((err as Error).message).toMatch(/key service unreachable at .*: no answer within 300 ms/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    open.forEach((s) => s.destroy());
  });

  it('reports a connection cut in the middle of a response as unreachable', async () => {
    const url = await peer((s) =>
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial":')),
    );
    await expect(new KmsClient(url, { timeoutMs: 2000 }).status('dev-1')).rejects.toBeInstanceOf(KmsUnreachableError);
  });

  it('reaches a key service at an IPv6 literal address', async () => {
    server = createServer((s) =>
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}')),
    );
    await new Promise<void>((r) => server!.listen(0, '::1', r));
    const client = new KmsClient(`http://[::1]:${(server.address() as { port: number }).port}`);
    expect(await client.request('GET', '/anything')).toEqual({});
  });

  it('leaves no timer behind once a request is answered', async () => {
    const url = await peer((s) =>
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}')),
    );
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    await new KmsClient(url, { timeoutMs: 60_000 }).request('GET', '/anything');
    expect(timers()).toBe(before);
  });
});
