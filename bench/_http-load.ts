// A minimal HTTP/1.1 keep-alive load client, so benchmarks measure the server and not their client: requests are
// bytes built once (or by a builder), responses are parsed by their status line and Content-Length alone (all our
// servers send), and each response sends the next request from the socket's own data callback (no promise per
// request). Optionally `pipelining` requests in flight per connection. Its own CPU per request is reported.
import { connect, type Socket } from 'node:net';

export interface LoadResult {
  ok: number;
  failed: number;
  /** Failed requests by HTTP status (0: the connection closed). */
  failures: Record<number, number>;
  seconds: number;
  /** CPU time this process spent per completed request (µs): the load client's own cost. */
  clientCpuPerRequest: number;
}

const CRLFCRLF = Buffer.from('\r\n\r\n');
const CONTENT_LENGTH = Buffer.from('\r\ncontent-length:');

/** Content-Length of a response head (bytes [0, end) of buf), case-insensitively; 0 if absent. */
function contentLength(buf: Buffer, end: number): number {
  // Servers here write the header in lower case: look for that first, then fall back to a case-insensitive scan.
  let at = buf.indexOf(CONTENT_LENGTH);
  if (at < 0 || at > end) {
    const m = /\r\ncontent-length: *(\d+)/i.exec(buf.toString('latin1', 0, end));
    return m ? Number(m[1]) : 0;
  }
  at += CONTENT_LENGTH.length;
  while (buf[at] === 0x20) at++;
  let n = 0;
  for (let c = buf[at]!; c >= 0x30 && c <= 0x39; c = buf[++at]!) n = n * 10 + (c - 0x30);
  return n;
}

/** Requests to send: the same bytes each time, or a builder for requests that must differ. */
type Source = Buffer | (() => Buffer);

/** One keep-alive connection: sends until the deadline, keeping `depth` requests in flight, then resolves. */
function drive(
  socket: Socket,
  source: Source,
  depth: number,
  deadline: number,
  onStatus: (status: number) => void,
): Promise<void> {
  const next = typeof source === 'function' ? source : () => source;
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    let inFlight = 0;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      resolve();
    };
    const send = () => {
      inFlight++;
      socket.write(next());
    };
    socket.on('data', (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let sendNow = 0;
      for (;;) {
        const end = buf.indexOf(CRLFCRLF);
        if (end < 0) break;
        const total = end + 4 + contentLength(buf, end);
        if (buf.length < total) break;
        onStatus((buf[9]! - 0x30) * 100 + (buf[10]! - 0x30) * 10 + (buf[11]! - 0x30));
        buf = buf.subarray(total);
        inFlight--;
        if (performance.now() < deadline) sendNow++;
      }
      for (let i = 0; i < sendNow; i++) send();
      if (inFlight === 0) finish();
    });
    const lost = () => {
      for (; inFlight > 0; inFlight--) onStatus(0);
      finish();
    };
    socket.on('close', lost);
    socket.on('error', lost);
    for (let i = 0; i < depth; i++) send();
  });
}

function open(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, host, () => resolve(s));
    s.setNoDelay(true);
    s.once('error', reject);
  });
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
 * Sends `request` over `connections` keep-alive connections for `seconds`, `pipelining` requests in flight on each
 * (default 1: each connection waits for its response, as one client would); 2xx responses count as ok.
 */
export async function load(
  host: string,
  port: number,
  request: Source,
  connections: number,
  seconds: number,
  pipelining = 1,
): Promise<LoadResult> {
  const sockets = await Promise.all(Array.from({ length: connections }, () => open(host, port)));
  let ok = 0;
  let failed = 0;
  const failures: Record<number, number> = {};
  const onStatus = (status: number) => {
    if (status >= 200 && status < 300) ok++;
    else {
      failed++;
      failures[status] = (failures[status] ?? 0) + 1;
    }
  };
  const cpu = process.cpuUsage();
  const start = performance.now();
  const deadline = start + seconds * 1000;
  await Promise.all(sockets.map((s) => drive(s, request, pipelining, deadline, onStatus)));
  const elapsed = (performance.now() - start) / 1000;
  const used = process.cpuUsage(cpu);
  for (const s of sockets) s.destroy();
  return {
    ok,
    failed,
    failures,
    seconds: elapsed,
    clientCpuPerRequest: ok + failed > 0 ? (used.user + used.system) / (ok + failed) : 0,
  };
}
