// The crypto backend of the browser client: SM4 and SM3 from sm-crypto-v2 (pure JavaScript, no Node Buffer), the
// GCM and GHASH above them from protocol/ (the same code the Node side runs). It stands in for protocol/backend.js,
// which needs node:crypto and the native addon: the client's import map (browser/import-map.ts) maps
// protocol/backend.js to this file, so protocol/envelope.js runs unchanged in a page and the envelope has one source.
//
// Why sm-crypto-v2's SM4 block rather than a hand-written one: the project already depends on it for SM2
// (protocol/app-session.ts), it is maintained, and test/browser/backend.test.ts checks it against GB/T 32907-2016
// Appendix A and against OpenSSL's SM4 for random keys and blocks. Its SM4-GCM mode is not used: the envelope's GCM
// is protocol/gcm.ts, so the browser and the broker cannot drift apart.
//
// NOT CONSTANT-TIME: table-driven SM4 and GHASH in JavaScript (docs/ARCHITECTURE.md, "Constant-time where it
// matters"); a page shares its process with whatever else the browser runs, so SECURITY.md says what that means.
import { sm3, sm4 } from 'sm-crypto-v2';
import { abytes, hexToBytes } from '../protocol/_bytes.js';
import type { BackendChoice, CryptoBackend } from '../protocol/backend.js';
import { ArgumentError } from '../protocol/errors.js';

export const SM4_BLOCK = 16;
export const SM4_KEY_LENGTH = 16;

function blocksOf(data: Uint8Array, name: string): Uint8Array {
  abytes(data, name);
  if (data.length % SM4_BLOCK !== 0) throw new ArgumentError(`${name} must be a multiple of 16 bytes`);
  return data;
}

function keyIv(key: Uint8Array, iv?: Uint8Array): void {
  abytes(key, 'key', SM4_KEY_LENGTH);
  if (iv !== undefined) abytes(iv, 'iv', SM4_BLOCK);
}

/** SM4-ECB without padding: each 16-byte block on its own, the building block of CTR and GCM. */
function ecb(key: Uint8Array, blocks: Uint8Array): Uint8Array {
  return Uint8Array.from(sm4.encrypt(blocks, key, { mode: 'ecb', padding: 'none', output: 'array' }));
}

export const browserBackend: CryptoBackend = {
  name: 'portable',
  createBlockCipher(key) {
    keyIv(key);
    const k = Uint8Array.from(key);
    return { encryptBlocks: (blocks) => ecb(k, blocksOf(blocks, 'blocks')) };
  },
  sm4Ctr(key, iv, data) {
    keyIv(key, iv);
    abytes(data, 'data');
    const n = Math.ceil(data.length / SM4_BLOCK);
    const counters = new Uint8Array(n * SM4_BLOCK);
    const counter = Uint8Array.from(iv);
    for (let b = 0; b < n; b++) {
      counters.set(counter, b * SM4_BLOCK);
      // The whole 128-bit counter increments, as OpenSSL's sm4-ctr does.
      for (let i = SM4_BLOCK - 1; i >= 0 && ++counter[i]! === 256; i--) counter[i] = 0;
    }
    const stream = ecb(key, counters);
    const out = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = data[i]! ^ stream[i]!;
    return out;
  },
  sm4CbcEncrypt(key, iv, data) {
    keyIv(key, iv);
    return Uint8Array.from(
      sm4.encrypt(blocksOf(data, 'data'), key, { mode: 'cbc', iv, padding: 'none', output: 'array' }),
    );
  },
  sm4CbcDecrypt(key, iv, data) {
    keyIv(key, iv);
    return Uint8Array.from(
      sm4.decrypt(blocksOf(data, 'data'), key, { mode: 'cbc', iv, padding: 'none', output: 'array' }),
    );
  },
  sm3(data) {
    return hexToBytes(sm3(abytes(data, 'data')));
  },
  hmacSm3(key, data) {
    return hexToBytes(sm3(abytes(data, 'data'), { key: abytes(key, 'key'), mode: 'hmac' }));
  },
};

/** protocol/backend.js's getBackend, as protocol/envelope.js calls it: every choice is the browser backend. */
export function getBackend(choice: BackendChoice = 'auto'): CryptoBackend {
  if (choice !== 'auto' && choice !== 'portable') throw new ArgumentError(`backend '${choice}' is not in a browser`);
  return browserBackend;
}
