// The optional native SM4-GCM (protocol/native/sm4_gcm.c, built by `npm ci`): loaded once and used only after it
// passes a known-answer test; without it the envelope uses GcmKey (JavaScript GCM over OpenSSL's SM4).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { abytes } from './_bytes.js';
import { ArgumentError, ProtocolError } from './errors.js';
import { GCM_MAX_PLAINTEXT, GCM_NONCE_LENGTH, GCM_TAG_LENGTH, sealDetached } from './gcm.js';
import type { SuiteKey } from './suites.js';

/** The addon's exports (see sm4_gcm.c). A key is an opaque external holding the round keys and H. */
interface Sm4GcmAddon {
  gcm: boolean;
  /** 'aesni': SM4 through AES-NI, no secret-indexed tables; 'tables': the table-driven rounds. */
  sm4: 'aesni' | 'tables';
  createKey(key: Uint8Array): object;
  destroyKey(key: object): void;
  encryptBlocks(key: object, blocks: Uint8Array, out: Uint8Array): void;
  seal(key: object, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array, out: Uint8Array, offset: number): void;
  open(
    key: object,
    nonce: Uint8Array,
    aad: Uint8Array,
    ciphertext: Uint8Array,
    tag: Uint8Array,
    out: Uint8Array,
  ): boolean;
}

/** Why the addon is or is not in use; `qkey envelope info` and the broker's startup log print it. */
export interface AddonStatus {
  active: boolean;
  reason: string;
}

const ADDON_FILE = 'build/Release/qkey_sm4gcm.node';
/** This module runs from protocol/ (tests) or dist/protocol/ (built); the addon is built at the package root. */
const CANDIDATES = ['../', '../../'].map((up) => new URL(up + ADDON_FILE, import.meta.url));

// RFC 8998 Appendix A.1 (SM4-GCM), checked before the addon is trusted with anything.
const KAT = {
  key: '0123456789abcdeffedcba9876543210',
  nonce: '00001234567800000000abcd',
  aad: 'feedfacedeadbeeffeedfacedeadbeefabaddad2',
  plaintext:
    'aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccddddddddddddddddeeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa',
  sealed:
    '17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d' +
    '83de3541e4c2b58177e065a9bf7b62ec',
};

function passesKat(addon: Sm4GcmAddon): boolean {
  const h = (s: string) => Buffer.from(s, 'hex');
  const key = addon.createKey(h(KAT.key));
  try {
    const pt = h(KAT.plaintext);
    const out = Buffer.alloc(pt.length + GCM_TAG_LENGTH);
    addon.seal(key, h(KAT.nonce), h(KAT.aad), pt, out, 0);
    if (out.toString('hex') !== KAT.sealed) return false;
    const back = Buffer.alloc(pt.length);
    const ok = addon.open(key, h(KAT.nonce), h(KAT.aad), out.subarray(0, pt.length), out.subarray(pt.length), back);
    out[0]! ^= 1;
    const forged = addon.open(key, h(KAT.nonce), h(KAT.aad), out.subarray(0, pt.length), out.subarray(pt.length), back);
    return ok && !forged && back.equals(pt);
  } finally {
    addon.destroyKey(key);
  }
}

let loaded: { addon: Sm4GcmAddon | undefined; status: AddonStatus } | undefined;

function load(): { addon: Sm4GcmAddon | undefined; status: AddonStatus } {
  if (loaded) return loaded;
  const off = (reason: string) => (loaded = { addon: undefined, status: { active: false, reason } });
  if (/^(0|off|false|no)$/i.test(process.env.QKEY_SM4GCM_ADDON ?? '')) return off('disabled by QKEY_SM4GCM_ADDON');
  const file = CANDIDATES.find((url) => existsSync(url));
  if (!file) return off(`not built (${ADDON_FILE} missing; npm run build:native builds it)`);
  let addon: Sm4GcmAddon;
  try {
    addon = createRequire(import.meta.url)(fileURLToPath(file)) as Sm4GcmAddon;
  } catch (err) {
    return off(`failed to load: ${(err as Error).message}`);
  }
  if (!addon.gcm) return off('this CPU lacks PCLMULQDQ');
  if (!passesKat(addon)) return off('failed its known-answer test (RFC 8998 A.1)');
  const sm4 = addon.sm4 === 'aesni' ? 'SM4 on AES-NI' : 'table-driven SM4';
  return (loaded = { addon, status: { active: true, reason: `native SM4-GCM addon (${sm4}, GHASH on PCLMULQDQ)` } });
}

export function sm4GcmAddonStatus(): AddonStatus {
  return load().status;
}

/**
 * The addon's SM4 alone (ECB over whole blocks, `iterations` times in a row), for known-answer tests; undefined
 * when the addon is not in use.
 */
export function addonEncryptBlocks(key: Uint8Array, blocks: Uint8Array, iterations = 1): Uint8Array | undefined {
  const addon = load().addon;
  if (!addon) return undefined;
  const k = addon.createKey(abytes(key, 'key', 16));
  const out = Uint8Array.from(blocks);
  for (let i = 0; i < iterations; i++) addon.encryptBlocks(k, out, out);
  addon.destroyKey(k);
  return out;
}

/** SM4-GCM on the addon, with the same contract as GcmKey; undefined when the addon is not in use. */
export function createAddonGcmKey(key: Uint8Array): SuiteKey | undefined {
  const addon = load().addon;
  return addon && new AddonGcmKey(addon, key);
}

class AddonGcmKey implements SuiteKey {
  private key: object | undefined;

  constructor(
    private readonly addon: Sm4GcmAddon,
    key: Uint8Array,
  ) {
    this.key = addon.createKey(abytes(key, 'key', 16));
  }

  seal(nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): { ciphertext: Uint8Array; tag: Uint8Array } {
    return sealDetached(this, nonce, aad, plaintext);
  }

  sealInto(out: Uint8Array, offset: number, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): void {
    abytes(nonce, 'nonce', GCM_NONCE_LENGTH);
    if (plaintext.length > GCM_MAX_PLAINTEXT) throw new ProtocolError('PROTO_ERR_TOO_LARGE', 'GCM plaintext limit');
    this.addon.seal(this.live(), nonce, aad, plaintext, out, offset);
  }

  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array): Uint8Array | undefined {
    abytes(nonce, 'nonce', GCM_NONCE_LENGTH);
    abytes(tag, 'tag', GCM_TAG_LENGTH);
    if (ciphertext.length > GCM_MAX_PLAINTEXT) throw new ProtocolError('PROTO_ERR_TOO_LARGE', 'GCM plaintext limit');
    // From Node's buffer pool: a fresh ArrayBuffer per message costs more than the decryption at 1 KiB. Its old
    // contents never escape: the addon overwrites all of it and only after the tag verified (SP 800-38D §7.2
    // step 8); on failure the buffer is dropped.
    const plaintext = Buffer.allocUnsafe(ciphertext.length);
    return this.addon.open(this.live(), nonce, aad, ciphertext, tag, plaintext) ? plaintext : undefined;
  }

  destroy(): void {
    if (this.key) this.addon.destroyKey(this.key);
    this.key = undefined;
  }

  private live(): object {
    if (!this.key) throw new ArgumentError('SM4-GCM key has been destroyed');
    return this.key;
  }
}
