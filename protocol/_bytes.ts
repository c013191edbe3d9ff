// Byte helpers shared by the protocol code: argument checks, hex, zeroing, constant-time compare, UTF-8.
import { ArgumentError } from './errors.js';

/** Returns `value` if it is a Uint8Array (of `length`, when given); throws ArgumentError otherwise. */
export function abytes(value: unknown, name: string, length?: number): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new ArgumentError(`${name} must be a Uint8Array`);
  if (length !== undefined && value.length !== length) {
    throw new ArgumentError(`${name} must be ${length} bytes, got ${value.length}`);
  }
  return value;
}

/** Returns `value` if it is an integer in [min, max]; throws ArgumentError otherwise. */
export function aint(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ArgumentError(`${name} must be an integer in [${min}, ${max}]`);
  }
  return value;
}

const HEX_RE = /^(?:[0-9a-fA-F]{2})*$/;

/** The value of a hex digit's character code (the caller checked it is one). */
function nibble(c: number): number {
  return c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57;
}

/** Parses an even-length hex string (no prefix, no separators). */
export function hexToBytes(hex: string, name = 'hex'): Uint8Array {
  if (typeof hex !== 'string' || !HEX_RE.test(hex)) {
    throw new ArgumentError(`${name} must be an even-length hex string`);
  }
  // No Buffer: the browser client (browser/) loads this module as it is.
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++)
    out[i] = (nibble(hex.charCodeAt(2 * i)) << 4) | nibble(hex.charCodeAt(2 * i + 1));
  return out;
}

const HEX_DIGITS = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

export function bytesToHex(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) out += HEX_DIGITS[b];
  return out;
}

/** Constant-time equality for equal-length inputs; unequal lengths return false at once (lengths are public). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}

/** Overwrites secret buffers with zeros (best effort: copies made by the runtime are out of reach). */
export function clean(...buffers: Array<Uint8Array | Uint32Array | undefined>): void {
  for (const b of buffers) b?.fill(0);
}

const utf8 = new TextEncoder();
export function utf8Bytes(text: string): Uint8Array {
  return utf8.encode(text);
}
