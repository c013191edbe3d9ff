// GHASH (NIST SP 800-38D §6.4) with Shoup's 8-bit tables: a 4 KiB table per hash key, built once per key.
//
// NOT CONSTANT-TIME: every multiplication indexes the table by bytes of the secret-dependent hash state, so cache
// timing can leak information about H and the data. This is the fallback for runtimes without the native addon
// (protocol/native/sm4_gcm.c, GHASH on PCLMULQDQ without secret-indexed memory access); see "Constant-time where it
// matters" in docs/ARCHITECTURE.md.
//
// Field elements are 128-bit blocks held as four big-endian 32-bit words (w0 = bytes 0..3). In GCM's
// bit order the first bit of the block is the coefficient of x^0, so multiplying by x is a right shift
// and the reduction polynomial x^128 + x^7 + x^2 + x + 1 becomes XOR of 0xE1 into the top byte.

/** R8[r]: what XOR-ing into w0 reduces the byte r shifted out of w3 by a right shift of 8 bits. */
const R8 = buildReductionTable();

function buildReductionTable(): Uint32Array {
  const table = new Uint32Array(256);
  for (let r = 0; r < 256; r++) {
    // Shift (0, 0, 0, r) right by one bit eight times; the r bits fall off and only reductions remain in w0.
    let w0 = 0;
    let w3 = r;
    for (let i = 0; i < 8; i++) {
      const carry = w3 & 1;
      w3 >>>= 1;
      w0 = (w0 >>> 1) ^ (carry ? 0xe1000000 : 0);
    }
    table[r] = w0 >>> 0;
  }
  return table;
}

/** A GHASH key: M[b] = b(x) · H for each byte value b placed in the first byte of a block. */
export class GhashKey {
  /** 256 entries of 4 words. */
  readonly table: Uint32Array;

  constructor(h: Uint8Array) {
    const m = new Uint32Array(256 * 4);
    const view = new DataView(h.buffer, h.byteOffset, 16);
    // M[0x80] = H (bit 0 of byte 0 is x^0), M[0x40] = H·x, ..., M[0x01] = H·x^7.
    m[128 * 4] = view.getUint32(0);
    m[128 * 4 + 1] = view.getUint32(4);
    m[128 * 4 + 2] = view.getUint32(8);
    m[128 * 4 + 3] = view.getUint32(12);
    for (let i = 64; i > 0; i >>>= 1) {
      const s = 2 * i * 4;
      const d = i * 4;
      const carry = (m[s + 3] as number) & 1;
      m[d + 3] = ((m[s + 3] as number) >>> 1) | ((m[s + 2] as number) << 31);
      m[d + 2] = ((m[s + 2] as number) >>> 1) | ((m[s + 1] as number) << 31);
      m[d + 1] = ((m[s + 1] as number) >>> 1) | ((m[s] as number) << 31);
      m[d] = ((m[s] as number) >>> 1) ^ (carry ? 0xe1000000 : 0);
    }
    // Linearity fills the rest: M[a ^ b] = M[a] ^ M[b].
    for (let i = 2; i < 256; i <<= 1) {
      for (let j = 1; j < i; j++) {
        for (let w = 0; w < 4; w++) m[(i + j) * 4 + w] = (m[i * 4 + w] as number) ^ (m[j * 4 + w] as number);
      }
    }
    this.table = m;
  }

  /** Zeroes the table (it is derived from H = E_K(0^128) and so is key material). */
  destroy(): void {
    this.table.fill(0);
  }
}

/** Running GHASH state Y; feed AAD, then ciphertext, then the length block. */
export class Ghash {
  private y0 = 0;
  private y1 = 0;
  private y2 = 0;
  private y3 = 0;
  private readonly m: Uint32Array;

  constructor(key: GhashKey) {
    this.m = key.table;
  }

  /** Absorbs `data`, zero-padding its last partial block (SP 800-38D §7.1, steps 4-5). */
  update(data: Uint8Array): this {
    const full = data.length & ~15;
    if (full > 0) this.blocks(new DataView(data.buffer, data.byteOffset, full), full);
    if (full < data.length) {
      const last = new Uint8Array(16);
      last.set(data.subarray(full));
      this.blocks(new DataView(last.buffer), 16);
    }
    return this;
  }

  /** Absorbs the block len(A) || len(C) in bits, each as a 64-bit big-endian integer, and returns S. */
  finish(aadLength: number, ciphertextLength: number): Uint8Array {
    const lengths = new DataView(new ArrayBuffer(16));
    lengths.setUint32(0, Math.floor((aadLength * 8) / 2 ** 32));
    lengths.setUint32(4, (aadLength * 8) >>> 0);
    lengths.setUint32(8, Math.floor((ciphertextLength * 8) / 2 ** 32));
    lengths.setUint32(12, (ciphertextLength * 8) >>> 0);
    this.blocks(lengths, 16);
    const out = new Uint8Array(16);
    const v = new DataView(out.buffer);
    v.setUint32(0, this.y0);
    v.setUint32(4, this.y1);
    v.setUint32(8, this.y2);
    v.setUint32(12, this.y3);
    this.y0 = this.y1 = this.y2 = this.y3 = 0;
    return out;
  }

  /** For each 16-byte block X: Y = (Y ^ X) · H, by Horner's rule over X's bytes from last to first. */
  private blocks(view: DataView, length: number): void {
    const m = this.m;
    let y0 = this.y0;
    let y1 = this.y1;
    let y2 = this.y2;
    let y3 = this.y3;
    for (let off = 0; off < length; off += 16) {
      const x0 = y0 ^ view.getUint32(off);
      const x1 = y1 ^ view.getUint32(off + 4);
      const x2 = y2 ^ view.getUint32(off + 8);
      const x3 = y3 ^ view.getUint32(off + 12);
      let idx = (x3 & 0xff) << 2;
      let z0 = m[idx] as number;
      let z1 = m[idx + 1] as number;
      let z2 = m[idx + 2] as number;
      let z3 = m[idx + 3] as number;
      // Bytes 14..0 of X: byte i is (word >>> sh) & 0xff, stepping through x3 (from byte 14), x2, x1, x0.
      let word = x3;
      let sh = 8;
      for (let i = 14; i >= 0; i--) {
        const rem = z3 & 0xff;
        z3 = (z3 >>> 8) | (z2 << 24);
        z2 = (z2 >>> 8) | (z1 << 24);
        z1 = (z1 >>> 8) | (z0 << 24);
        z0 = (z0 >>> 8) ^ (R8[rem] as number);
        idx = ((word >>> sh) & 0xff) << 2;
        z0 ^= m[idx] as number;
        z1 ^= m[idx + 1] as number;
        z2 ^= m[idx + 2] as number;
        z3 ^= m[idx + 3] as number;
        sh += 8;
        if (sh === 32) {
          sh = 0;
          word = i === 12 ? x2 : i === 8 ? x1 : x0;
        }
      }
      y0 = z0;
      y1 = z1;
      y2 = z2;
      y3 = z3;
    }
    this.y0 = y0 >>> 0;
    this.y1 = y1 >>> 0;
    this.y2 = y2 >>> 0;
    this.y3 = y3 >>> 0;
  }
}
