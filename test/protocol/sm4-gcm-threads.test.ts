// The native SM4-GCM addon loaded and used from several worker threads at once (the broker runs on one), and its
// Node-API boundary given what JavaScript could wrongly pass it.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { createAddonGcmKey, sm4GcmAddonStatus } from '../../protocol/sm4-gcm-addon.js';

const ADDON = fileURLToPath(new URL('../../build/Release/qkey_sm4gcm.node', import.meta.url));
const DIST_MODULE = new URL('../../dist/protocol/sm4-gcm-addon.js', import.meta.url).href;
const addonIt = sm4GcmAddonStatus().active && existsSync(ADDON) ? it : it.skip;

/**
 * Run in each worker as soon as it starts: load the addon through the built module (its load runs the known-answer
 * test), seal lengths 0..300 under keys derived from the length, then seal and open `rounds` random messages.
 */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { randomBytes } = require('node:crypto');
import(workerData.module).then((m) => {
  const status = m.sm4GcmAddonStatus();
  const out = [];
  for (let n = 0; n <= 300; n += 13) {
    const k = m.createAddonGcmKey(new Uint8Array(16).fill(n));
    const s = k.seal(new Uint8Array(12).fill(n + 1), new Uint8Array(n % 40).fill(2), new Uint8Array(n).fill(n & 255));
    out.push(Buffer.concat([s.ciphertext, s.tag]).toString('hex'));
    k.destroy();
  }
  let failures = 0;
  for (let i = 0; i < workerData.rounds; i++) {
    const k = m.createAddonGcmKey(randomBytes(16));
    const nonce = randomBytes(12), aad = randomBytes(i % 50), pt = randomBytes(i % 700);
    const s = k.seal(nonce, aad, pt);
    const back = k.open(nonce, aad, s.ciphertext, s.tag);
    if (!back || !Buffer.from(back).equals(pt)) failures++;
    // Every other key is left to the garbage collector and the worker's teardown.
    if (i % 2) k.destroy();
  }
  parentPort.postMessage({ status, out, failures });
});
`;

function runWorker(rounds: number): Promise<{ status: { active: boolean }; out: string[]; failures: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { eval: true, workerData: { module: DIST_MODULE, rounds } });
    let result: { status: { active: boolean }; out: string[]; failures: number } | undefined;
    w.once('message', (m: typeof result) => (result = m));
    w.once('error', reject);
    w.once('exit', (code) => (code === 0 && result ? resolve(result) : reject(new Error(`worker exit ${code}`))));
  });
}

describe('SM4-GCM addon on worker threads', () => {
  addonIt('loads and works in six workers started together, each giving the main thread’s bytes', async () => {
    const results = await Promise.all(Array.from({ length: 6 }, () => runWorker(2000)));
    const expected: string[] = [];
    for (let n = 0; n <= 300; n += 13) {
      const s = createAddonGcmKey(new Uint8Array(16).fill(n))!.seal(
        new Uint8Array(12).fill(n + 1),
        new Uint8Array(n % 40).fill(2),
        new Uint8Array(n).fill(n & 255),
      );
      expected.push(Buffer.concat([s.ciphertext, s.tag]).toString('hex'));
    }
    for (const r of results) {
      expect(r.status.active).toBe(true);
      expect(r.failures).toBe(0);
      expect(r.out).toEqual(expected);
    }
    // The workers' teardown finalized their keys; this thread's addon is unaffected.
    expect(
      createAddonGcmKey(new Uint8Array(16).fill(13))!.seal(new Uint8Array(12), new Uint8Array(0), new Uint8Array(5))
        .tag,
    ).toHaveLength(16);
  });
});

describe('SM4-GCM addon boundary', () => {
  /** The raw addon, below the TypeScript wrapper's checks. */
  const raw = () =>
    createRequire(import.meta.url)(ADDON) as {
      createKey(k?: unknown): object;
      destroyKey(k: unknown): void;
      seal(...args: unknown[]): void;
      open(...args: unknown[]): boolean;
      encryptBlocks(...args: unknown[]): void;
    };

  addonIt('takes nothing but its own live keys: plain objects, arrays, other values and destroyed keys throw', () => {
    const addon = raw();
    const nonce = new Uint8Array(12);
    const out = new Uint8Array(32);
    for (const notAKey of [{}, [], new Uint8Array(148), null, undefined, 0, 'key', () => 0]) {
      expect(() => addon.seal(notAKey, nonce, new Uint8Array(0), new Uint8Array(1), out, 0)).toThrow(
        /not a live SM4-GCM key/,
      );
      expect(() => addon.open(notAKey, nonce, new Uint8Array(0), new Uint8Array(1), new Uint8Array(16), out)).toThrow(
        /not a live/,
      );
      expect(() => addon.encryptBlocks(notAKey, new Uint8Array(16), out)).toThrow(/not a live/);
      expect(() => addon.destroyKey(notAKey)).not.toThrow();
    }
    const key = addon.createKey(new Uint8Array(16));
    addon.destroyKey(key);
    expect(() => addon.seal(key, nonce, new Uint8Array(0), new Uint8Array(1), out, 0)).toThrow(/not a live/);
  });

  addonIt('refuses missing arguments, wrong types and overlapping buffers with a TypeError', () => {
    const addon = raw();
    const key = addon.createKey(new Uint8Array(16));
    expect(() => addon.createKey()).toThrow(TypeError);
    expect(() => addon.createKey(new Uint16Array(8))).toThrow(/16 bytes/);
    expect(() => addon.seal(key, new Uint8Array(12))).toThrow(/missing arguments/);
    expect(() =>
      addon.seal(key, new Uint8Array(12), new Uint8Array(0), new Uint8Array(1), new Uint8Array(17), 'x'),
    ).toThrow(TypeError);
    expect(() =>
      addon.seal(key, new Uint8Array(12), new Uint8Array(0), new Uint8Array(1), new Uint8Array(17), -1),
    ).toThrow(/too small/);
    // Ciphertext written over plaintext that has not been read yet: refused, unless exactly in place.
    const buf = new Uint8Array(64);
    expect(() => addon.seal(key, new Uint8Array(12), new Uint8Array(0), buf.subarray(0, 32), buf, 1)).toThrow(
      /overlap/,
    );
    expect(() => addon.seal(key, new Uint8Array(12), new Uint8Array(0), buf.subarray(0, 32), buf, 0)).not.toThrow();
    expect(() =>
      addon.open(key, new Uint8Array(12), new Uint8Array(0), buf.subarray(1, 33), new Uint8Array(16), buf),
    ).toThrow(/overlap/);
    addon.destroyKey(key);
  });
});
