// How the Redis persistence writes packets and subscriptions: JSON, with each top-level Buffer (a packet's payload)
// as base64 under "$b". Pure code: no sockets, no clocks.

type Stored = Record<string, unknown>;

/** One object as one JSON string; Buffers at the top level survive the round trip as Buffers. */
export function encodeRecord(record: object): string {
  const out: Stored = {};
  for (const [k, v] of Object.entries(record)) {
    if (v === undefined || typeof v === 'function') continue;
    out[k] = Buffer.isBuffer(v) ? { $b: v.toString('base64') } : v;
  }
  return JSON.stringify(out);
}

/** The object encodeRecord wrote. Throws on text that is not a JSON object (a damaged entry). */
export function decodeRecord<T = Stored>(text: string | Buffer): T {
  const parsed: unknown = JSON.parse(typeof text === 'string' ? text : text.toString('utf8'));
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new Error('damaged record in Redis: not a JSON object');
  const out = parsed as Stored;
  for (const [k, v] of Object.entries(out)) {
    if (v !== null && typeof v === 'object' && typeof (v as { $b?: unknown }).$b === 'string')
      out[k] = Buffer.from((v as { $b: string }).$b, 'base64');
  }
  return out as T;
}

/** Payload bytes of a packet (a string payload counts its UTF-8 bytes). */
export function payloadBytes(payload: unknown): number {
  if (Buffer.isBuffer(payload)) return payload.length;
  if (typeof payload === 'string') return Buffer.byteLength(payload);
  return 0;
}
