// The broker's rotation notice to an application (docs/PROTOCOL.md §22.6): `{"rotate": n}` on the session topic,
// telling the app to run the handshake again because its generation n has used half of a rotation limit. Pure.
import { utf8Bytes } from './_bytes.js';

/** A notice is a few dozen bytes; anything longer on the session topic is not one. */
const MAX_NOTICE = 64;

/** The notice's payload for generation `keyIndex`. */
export function rotationNotice(keyIndex: number): Uint8Array {
  return utf8Bytes(JSON.stringify({ rotate: keyIndex }));
}

/** The generation a notice names, or undefined for anything that is not a well-formed notice. */
export function parseRotationNotice(payload: Uint8Array): number | undefined {
  if (payload.length === 0 || payload.length > MAX_NOTICE) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
  } catch {
    return undefined;
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return undefined;
  const keys = Object.keys(json);
  const n = (json as { rotate?: unknown }).rotate;
  if (keys.length !== 1 || typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 0xffffffff) return undefined;
  return n;
}
