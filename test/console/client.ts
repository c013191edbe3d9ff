// Test fixture: a browser-like HTTP client for the console (one cookie jar, Origin on POSTs, raw requests).
import { request as httpRequest } from 'node:http';

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** The body with white space around tags removed and other runs of it made one space, for matching. */
  flat: string;
}

export const flatten = (html: string) =>
  html
    .replace(/\s+/g, ' ')
    .replace(/\s*(<|>)\s*/g, '$1')
    .replace(/\s*\/>/g, '>');

/** One raw HTTP/1.1 request: path and headers exactly as given (no normalisation by a client library). */
export function raw(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<Answer> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        method,
        path,
        headers: { ...(body !== undefined ? { 'content-length': String(Buffer.byteLength(body)) } : {}), ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () =>
          resolve({ status: res.statusCode!, headers: res.headers, body: text, flat: flatten(text) }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();

/** The CSRF token a page's forms carry. */
export function csrfOf(html: string): string {
  const m = /name="csrf" value="([^"]+)"/.exec(html);
  if (!m) throw new Error('no CSRF field on the page');
  return m[1]!;
}

export class ConsoleBrowser {
  cookie: string | undefined;

  constructor(readonly base: string) {}

  get origin(): string {
    return new URL(this.base).origin;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.cookie ? { cookie: this.cookie } : {}), ...extra };
  }

  private keep(a: Answer): Answer {
    const set = a.headers['set-cookie'];
    for (const c of [set ?? []].flat()) {
      const pair = c.split(';')[0]!;
      this.cookie = /Max-Age=0/i.test(c) ? undefined : pair;
    }
    return a;
  }

  async get(path: string, extra?: Record<string, string>): Promise<Answer> {
    return this.keep(await raw(this.base, 'GET', path, this.headers(extra)));
  }

  async post(path: string, fields: Record<string, string>, extra: Record<string, string> = {}): Promise<Answer> {
    const headers = this.headers({
      'content-type': 'application/x-www-form-urlencoded',
      origin: this.origin,
      ...extra,
    });
    return this.keep(await raw(this.base, 'POST', path, headers, form(fields)));
  }

  async login(token: string): Promise<Answer> {
    return this.post('/console/login', { token });
  }

  /** The CSRF token of the page at `path` (signed in). */
  async csrf(path = '/console/devices'): Promise<string> {
    return csrfOf((await this.get(path)).body);
  }
}
