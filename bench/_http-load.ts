// A minimal HTTP/1.1 keep-alive load client (one request in flight per connection), so benchmarks measure the
// server and not node:http's client overhead; it understands only Content-Length responses, which is all ours send.
import { connect, type Socket } from 'node:net';

export interface LoadResult {
  ok: number;
  failed: number;
  /** Failed requests by HTTP status (0: the connection closed). */
  failures: Record<number, number>;
  seconds: number;
}

class Connection {
  private buf: Buffer = Buffer.alloc(0);
  private pending: ((status: number) => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      this.drain();
    });
    socket.on('close', () => this.pending?.(0));
    socket.on('error', () => this.pending?.(0));
  }

  static open(host: string, port: number): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const s = connect(port, host, () => resolve(new Connection(s)));
      s.once('error', reject);
    });
  }

  send(request: Buffer): Promise<number> {
    return new Promise((resolve) => {
      this.pending = resolve;
      this.socket.write(request);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private drain(): void {
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
    if (this.buf.length < end + 4 + length) return;
    this.buf = this.buf.subarray(end + 4 + length);
    const status = Number(head.slice(9, 12));
    const done = this.pending;
    this.pending = undefined;
    done?.(status);
  }
}

/** Builds the bytes of one POST request with a JSON body. */
export function jsonPost(
  host: string,
  port: number,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Buffer {
  const payload = Buffer.from(JSON.stringify(body));
  const extra = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  return Buffer.concat([
    Buffer.from(
      `POST ${path} HTTP/1.1\r\nhost: ${host}:${port}\r\ncontent-type: application/json\r\ncontent-length: ${payload.length}\r\n${extra}\r\n`,
    ),
    payload,
  ]);
}

/**
 * Sends `request` over `connections` keep-alive connections for `seconds`; 2xx responses count as ok. A function
 * builds each request anew (requests that must differ, such as claims of named keys).
 */
export async function load(
  host: string,
  port: number,
  request: Buffer | (() => Buffer),
  connections: number,
  seconds: number,
): Promise<LoadResult> {
  const next = typeof request === 'function' ? request : () => request;
  const conns = await Promise.all(Array.from({ length: connections }, () => Connection.open(host, port)));
  let ok = 0;
  let failed = 0;
  const failures: Record<number, number> = {};
  const start = performance.now();
  const deadline = start + seconds * 1000;
  await Promise.all(
    conns.map(async (c) => {
      while (performance.now() < deadline) {
        const status = await c.send(next());
        if (status >= 200 && status < 300) ok++;
        else {
          failed++;
          failures[status] = (failures[status] ?? 0) + 1;
          if (status === 0) return;
        }
      }
    }),
  );
  const elapsed = (performance.now() - start) / 1000;
  for (const c of conns) c.close();
  return { ok, failed, failures, seconds: elapsed };
}
