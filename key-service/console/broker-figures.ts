// Reads the configured brokers' /metrics for the console, server-side: one timeout and one size bound per broker.
import { type BrokerFigures, brokerFigures, parsePrometheusText } from './prometheus.js';

/** Largest metrics response read; a broker's is about 20 KiB. Past it the read stops and the broker is reported. */
export const MAX_METRICS_BYTES = 1024 * 1024;

export type BrokerReading =
  { url: string; ok: true; figures: BrokerFigures } | { url: string; ok: false; error: string };

/** The body as text, or an error once it passes `limit` bytes (the rest is not read). */
async function boundedText(res: Response, limit: number): Promise<string> {
  const declared = Number(res.headers.get('content-length'));
  if (declared > limit) throw new Error(`response larger than ${limit} bytes`);
  if (!res.body) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw new Error(`response larger than ${limit} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Why a fetch failed, in a line: the cause's code (ECONNREFUSED, ...) where there is one. */
function reason(err: unknown): string {
  if (err instanceof Error && err.name === 'TimeoutError') return 'no answer in time';
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  if (cause?.code) return cause.code;
  return err instanceof Error ? (cause?.message ?? err.message) : String(err);
}

export async function readBroker(url: string, timeoutMs: number, limit = MAX_METRICS_BYTES): Promise<BrokerReading> {
  try {
    // One signal bounds the whole exchange, headers and body; a redirect is not followed (it could lead anywhere).
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: 'error' });
    if (!res.ok) {
      await res.body?.cancel();
      return { url, ok: false, error: `HTTP ${res.status}` };
    }
    return { url, ok: true, figures: brokerFigures(parsePrometheusText(await boundedText(res, limit))) };
  } catch (err) {
    return { url, ok: false, error: reason(err) };
  }
}

/** Every configured broker, read in parallel. */
export function readBrokers(urls: readonly string[], timeoutMs: number): Promise<BrokerReading[]> {
  return Promise.all(urls.map((url) => readBroker(url, timeoutMs)));
}
