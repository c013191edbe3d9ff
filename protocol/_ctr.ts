// Counter blocks and keystream XOR for the CTR-based suites: the per-message hot path, kept allocation-light.

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function bswap32(x: number): number {
  return ((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24);
}

/**
 * `count` counter blocks nonce (12 bytes) || u32 big-endian counter, counters first, first+1, ...
 * (SP 800-38D inc32; callers keep `first + count` below 2^32).
 */
export function counterBlocks(nonce: Uint8Array, first: number, count: number): Uint8Array {
  const out = new Uint8Array(count * 16);
  if (!LITTLE_ENDIAN) {
    for (let b = 0, o = 0; b < count; b++, o += 16) {
      out.set(nonce, o);
      new DataView(out.buffer).setUint32(o + 12, first + b);
    }
    return out;
  }
  // Write whole words: the nonce words as the host reads them, the counter byte-swapped to big-endian.
  const words = new Uint32Array(out.buffer);
  const n = new Uint32Array(Uint8Array.from(nonce).buffer);
  const n0 = n[0] as number;
  const n1 = n[1] as number;
  const n2 = n[2] as number;
  for (let b = 0, w = 0; b < count; b++, w += 4) {
    words[w] = n0;
    words[w + 1] = n1;
    words[w + 2] = n2;
    words[w + 3] = bswap32(first + b);
  }
  return out;
}

/** out[outOffset + i] = data[i] ^ stream[streamOffset + i] for i < data.length. */
export function xorStream(
  out: Uint8Array,
  outOffset: number,
  data: Uint8Array,
  stream: Uint8Array,
  streamOffset: number,
): void {
  const n = data.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    out[outOffset + i] = (data[i] as number) ^ (stream[streamOffset + i] as number);
    out[outOffset + i + 1] = (data[i + 1] as number) ^ (stream[streamOffset + i + 1] as number);
    out[outOffset + i + 2] = (data[i + 2] as number) ^ (stream[streamOffset + i + 2] as number);
    out[outOffset + i + 3] = (data[i + 3] as number) ^ (stream[streamOffset + i + 3] as number);
  }
  for (; i < n; i++) out[outOffset + i] = (data[i] as number) ^ (stream[streamOffset + i] as number);
}
