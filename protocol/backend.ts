// SM4 and SM3 behind one interface: node:crypto (OpenSSL) with the SM4-GCM addon when built, or sm-crypto.
import { createCipheriv, createDecipheriv, createHash, createHmac, getCiphers, getHashes } from 'node:crypto';
import smCrypto from 'sm-crypto';
import { abytes } from './_bytes.js';
import { ArgumentError, ProtocolError } from './errors.js';
import { createAddonGcmKey } from './sm4-gcm-addon.js';
import type { SuiteKey } from './suites.js';

export const SM4_BLOCK = 16;
export const SM4_KEY_LENGTH = 16;

/** An SM4 key schedule that encrypts whole blocks (ECB); the building block for CTR and GCM. */
export interface BlockCipher {
  /** Encrypts each 16-byte block of `blocks` independently. Length must be a multiple of 16. */
  encryptBlocks(blocks: Uint8Array): Uint8Array;
}

export interface CryptoBackend {
  readonly name: 'native' | 'portable';
  createBlockCipher(key: Uint8Array): BlockCipher;
  /** SM4-CTR with a 128-bit big-endian counter block incremented per block (OpenSSL's `sm4-ctr`). */
  sm4Ctr(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array;
  /** SM4-CBC without padding; `data` must be a multiple of 16 bytes. */
  sm4CbcEncrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array;
  sm4CbcDecrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array;
  sm3(data: Uint8Array): Uint8Array;
  hmacSm3(key: Uint8Array, data: Uint8Array): Uint8Array;
  /** A whole SM4-GCM for this key when the backend has one faster than GCM over createBlockCipher. */
  createGcm?(key: Uint8Array): SuiteKey | undefined;
}

function checkBlocks(data: Uint8Array, name: string): Uint8Array {
  abytes(data, name);
  if (data.length % SM4_BLOCK !== 0) throw new ArgumentError(`${name} must be a multiple of 16 bytes`);
  return data;
}

function checkKeyIv(key: Uint8Array, iv?: Uint8Array): void {
  abytes(key, 'key', SM4_KEY_LENGTH);
  if (iv !== undefined) abytes(iv, 'iv', SM4_BLOCK);
}

function asUint8(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Runs a node:crypto cipher over `data` in one go. */
function runCipher(cipher: ReturnType<typeof createCipheriv>, data: Uint8Array): Uint8Array {
  cipher.setAutoPadding(false);
  const head = cipher.update(data);
  const tail = cipher.final();
  return asUint8(tail.length === 0 ? head : Buffer.concat([head, tail]));
}

export const nativeBackend: CryptoBackend = {
  name: 'native',
  createBlockCipher(key) {
    checkKeyIv(key);
    // One EVP context per key, kept open: update() on ECB without padding returns every full block at once,
    // so per-message cost is one native call and no key schedule (see bench/crypto).
    const ecb = createCipheriv('sm4-ecb', key, null);
    ecb.setAutoPadding(false);
    return {
      encryptBlocks(blocks) {
        return asUint8(ecb.update(checkBlocks(blocks, 'blocks')));
      },
    };
  },
  sm4Ctr(key, iv, data) {
    checkKeyIv(key, iv);
    return runCipher(createCipheriv('sm4-ctr', key, iv), abytes(data, 'data'));
  },
  sm4CbcEncrypt(key, iv, data) {
    checkKeyIv(key, iv);
    return runCipher(createCipheriv('sm4-cbc', key, iv), checkBlocks(data, 'data'));
  },
  sm4CbcDecrypt(key, iv, data) {
    checkKeyIv(key, iv);
    return runCipher(createDecipheriv('sm4-cbc', key, iv), checkBlocks(data, 'data'));
  },
  sm3(data) {
    return asUint8(createHash('sm3').update(abytes(data, 'data')).digest());
  },
  hmacSm3(key, data) {
    return asUint8(createHmac('sm3', abytes(key, 'key')).update(abytes(data, 'data')).digest());
  },
  // OpenSSL 3.0 has no SM4-GCM; the addon (protocol/native/sm4_gcm.c) does it in one native call when built.
  createGcm: createAddonGcmKey,
};

/** Increments a 16-byte big-endian counter in place (all 128 bits, as OpenSSL's CTR mode does). */
function increment128(counter: Uint8Array): void {
  for (let i = SM4_BLOCK - 1; i >= 0; i--) {
    counter[i] = ((counter[i] as number) + 1) & 0xff;
    if (counter[i] !== 0) return;
  }
}

function portableEcb(key: Uint8Array, blocks: Uint8Array): Uint8Array {
  return Uint8Array.from(smCrypto.sm4.encrypt(blocks, key, { padding: 'none', output: 'array' }));
}

export const portableBackend: CryptoBackend = {
  name: 'portable',
  createBlockCipher(key) {
    checkKeyIv(key);
    const k = Uint8Array.from(key);
    return { encryptBlocks: (blocks) => portableEcb(k, checkBlocks(blocks, 'blocks')) };
  },
  sm4Ctr(key, iv, data) {
    checkKeyIv(key, iv);
    abytes(data, 'data');
    const nBlocks = Math.ceil(data.length / SM4_BLOCK);
    const counters = new Uint8Array(nBlocks * SM4_BLOCK);
    const counter = Uint8Array.from(iv);
    for (let i = 0; i < nBlocks; i++) {
      counters.set(counter, i * SM4_BLOCK);
      increment128(counter);
    }
    const stream = portableEcb(key, counters);
    const out = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = (data[i] as number) ^ (stream[i] as number);
    return out;
  },
  sm4CbcEncrypt(key, iv, data) {
    checkKeyIv(key, iv);
    const out = smCrypto.sm4.encrypt(checkBlocks(data, 'data'), key, {
      mode: 'cbc',
      iv: Array.from(iv),
      padding: 'none',
      output: 'array',
    });
    return Uint8Array.from(out);
  },
  sm4CbcDecrypt(key, iv, data) {
    checkKeyIv(key, iv);
    const out = smCrypto.sm4.decrypt(checkBlocks(data, 'data'), key, {
      mode: 'cbc',
      iv: Array.from(iv),
      padding: 'none',
      output: 'array',
    });
    return Uint8Array.from(out);
  },
  sm3(data) {
    return Uint8Array.from(Buffer.from(smCrypto.sm3(abytes(data, 'data')), 'hex'));
  },
  hmacSm3(key, data) {
    const mac = smCrypto.sm3(abytes(data, 'data'), { key: abytes(key, 'key') });
    return Uint8Array.from(Buffer.from(mac, 'hex'));
  },
};

// GB/T 32907-2016 Appendix A, example 1: the probe that decides whether OpenSSL's SM4 really works here
// (a build can list a cipher and still refuse it, e.g. under a FIPS provider).
const PROBE_KEY = Buffer.from('0123456789abcdeffedcba9876543210', 'hex');
const PROBE_CT = '681edf34d206965e86b3e94f536e4246';

let nativeAvailable: boolean | undefined;

export function isNativeAvailable(): boolean {
  if (nativeAvailable === undefined) {
    try {
      const ciphers = new Set(getCiphers());
      const listed = ['sm4-ecb', 'sm4-ctr', 'sm4-cbc'].every((c) => ciphers.has(c)) && getHashes().includes('sm3');
      nativeAvailable =
        listed &&
        Buffer.from(nativeBackend.createBlockCipher(PROBE_KEY).encryptBlocks(PROBE_KEY)).toString('hex') === PROBE_CT;
    } catch {
      nativeAvailable = false;
    }
  }
  return nativeAvailable;
}

export type BackendChoice = 'auto' | 'native' | 'portable';

/** `auto` picks native when the runtime's OpenSSL has SM4 and SM3, portable (sm-crypto) otherwise. */
export function getBackend(choice: BackendChoice = 'auto'): CryptoBackend {
  switch (choice) {
    case 'portable':
      return portableBackend;
    case 'native':
      if (!isNativeAvailable()) {
        throw new ProtocolError('PROTO_ERR_UNAVAILABLE', "this runtime's OpenSSL lacks SM4 or SM3");
      }
      return nativeBackend;
    case 'auto':
      return isNativeAvailable() ? nativeBackend : portableBackend;
    default:
      throw new ArgumentError("backend must be 'auto', 'native' or 'portable'");
  }
}
