// Loads a known-answer vector file from test/vectors/ (each file records where its vectors come from).
import { readFileSync } from 'node:fs';

export interface VectorFile<T> {
  origin: string;
  vectors: T[];
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
