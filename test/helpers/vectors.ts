// Loads a known-answer vector file from test/vectors/ (each file records where its vectors come from).
import { readFileSync } from 'node:fs';

export interface VectorFile<T> {
  origin: string;
  vectors: T[];
}

/** gbt32907-sm4.json: SM4 encryption of one block, `iterations` times in a row. */
export interface Sm4Vector {
  name: string;
  key: string;
  plaintext: string;
  iterations: number;
  ciphertext: string;
}

/** rfc8998-sm4-gcm.json: SM4-GCM with a 96-bit IV. */
export interface GcmVector {
  key: string;
  iv: string;
  aad: string;
  plaintext: string;
  ciphertext: string;
  tag: string;
}

export function loadVectors<T>(name: string): VectorFile<T> {
  const url = new URL(`../vectors/${name}`, import.meta.url);
  const file = JSON.parse(readFileSync(url, 'utf8')) as VectorFile<T>;
  if (!file.origin || !Array.isArray(file.vectors) || file.vectors.length === 0) {
    throw new Error(`${name}: a vector file needs an origin and at least one vector`);
  }
  return file;
}

export const hex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
export const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
