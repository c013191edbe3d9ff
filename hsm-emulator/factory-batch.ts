// The factory key-batch format (docs/PROTOCOL.md §21): a fill batch sealed for one chip's SM2 transport key and
// signed by the key issuer, so a filling line carries it into a secure element without seeing a key byte.
import { randomBytes } from 'node:crypto';
import { GcmKey, getBackend } from '../protocol/index.js';
import {
  SM2_PUBLIC_KEY_LENGTH,
  SM2_SIGNATURE_LENGTH,
  type Sm2KeyPair,
  sm2Decrypt,
  sm2Encrypt,
  sm2Sign,
  sm2Verify,
} from './sm2.js';

const MAGIC = Buffer.from('QKFB');
export const FACTORY_BATCH_VERSION = 1;
const FLAG_LOGIN_KEY = 0x01;
/** A batch carries at most this many pool keys (the key service's limit per batch). */
export const MAX_BATCH_KEYS = 4096;
const KEY = 16;
const TAG = 16;
/** SM2 ciphertext of the 16-byte content key: C1 (65) || C3 (32) || C2 (16). */
const WRAPPED_CEK = 65 + 32 + KEY;
const NONCE = new Uint8Array(12);

export interface FactoryBatchContent {
  deviceId: string;
  batchId: string;
  /** Key index of the first uplink key; uplink keys take the next `up` indices, downlink keys the `down` after. */
  firstIndex: number;
  up: Uint8Array[];
  down: Uint8Array[];
  loginKey?: Uint8Array;
}

export interface OpenedFactoryBatch extends FactoryBatchContent {
  /** The issuer's public key (hex), for the chip to compare with the one it trusts. */
  issuer: string;
}

export class FactoryBatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FactoryBatchError';
  }
}

function u16str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length < 1 || b.length > 0xffff) throw new RangeError('identifier must be 1..65535 UTF-8 bytes');
  const out = Buffer.alloc(2 + b.length);
  out.writeUInt16BE(b.length, 0);
  b.copy(out, 2);
  return out;
}

/** The signed, unencrypted part: what the batch is, for whom, from whom (§21.2). Also the GCM AAD. */
function headerBytes(c: FactoryBatchContent, recipient: string, issuer: string): Buffer {
  const fixed = Buffer.alloc(8);
  MAGIC.copy(fixed, 0);
  fixed[4] = FACTORY_BATCH_VERSION;
  fixed[5] = c.loginKey ? FLAG_LOGIN_KEY : 0;
  const counts = Buffer.alloc(12);
  counts.writeUInt32BE(c.firstIndex, 0);
  counts.writeUInt32BE(c.up.length, 4);
  counts.writeUInt32BE(c.down.length, 8);
  return Buffer.concat([
    fixed,
    u16str(c.deviceId),
    u16str(c.batchId),
    counts,
    Buffer.from(recipient, 'hex'),
    Buffer.from(issuer, 'hex'),
  ]);
}

/** Seals `c` for the chip whose transport public key is `recipient`, signed with the issuer's key pair. */
export function sealFactoryBatch(c: FactoryBatchContent, recipient: string, issuer: Sm2KeyPair): Buffer {
  const keys = [...(c.loginKey ? [c.loginKey] : []), ...c.up, ...c.down];
  if (c.up.length + c.down.length > MAX_BATCH_KEYS) throw new RangeError(`at most ${MAX_BATCH_KEYS} keys per batch`);
  if (keys.some((k) => k.length !== KEY)) throw new RangeError('keys must be 16 bytes');
  if (!Number.isInteger(c.firstIndex) || c.firstIndex < 0 || c.firstIndex + c.up.length + c.down.length > 2 ** 32)
    throw new RangeError('key indices must stay within 0..2^32-1');
  const header = headerBytes(c, recipient, issuer.publicKey);
  const cek = randomBytes(KEY);
  const plaintext = Buffer.concat(keys);
  try {
    const wrapped = sm2Encrypt(cek, recipient);
    const gcm = new GcmKey(getBackend().createBlockCipher(cek));
    const { ciphertext, tag } = gcm.seal(NONCE, header, plaintext);
    gcm.destroy();
    const wrappedLength = Buffer.alloc(2);
    wrappedLength.writeUInt16BE(wrapped.length, 0);
    const signed = Buffer.concat([header, wrappedLength, wrapped, ciphertext, tag]);
    return Buffer.concat([signed, sm2Sign(signed, issuer)]);
  } finally {
    cek.fill(0);
    plaintext.fill(0);
  }
}

/** A cursor over the batch bytes that refuses to read past the end. */
class Reader {
  at = 0;
  constructor(private readonly b: Buffer) {}
  take(n: number): Buffer {
    if (this.at + n > this.b.length) throw new FactoryBatchError('batch is truncated');
    const out = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
  u16(): number {
    return this.take(2).readUInt16BE(0);
  }
  u32(): number {
    return this.take(4).readUInt32BE(0);
  }
  str(): string {
    const s = this.take(this.u16()).toString('utf8');
    if (s.length === 0) throw new FactoryBatchError('empty identifier');
    return s;
  }
}

/** The batch's header fields, read without any key (a filling line may show them). */
export function inspectFactoryBatch(bytes: Uint8Array): {
  deviceId: string;
  batchId: string;
  firstIndex: number;
  up: number;
  down: number;
  loginKey: boolean;
  recipient: string;
  issuer: string;
} {
  const r = new Reader(Buffer.from(bytes));
  if (!r.take(4).equals(MAGIC)) throw new FactoryBatchError('not a QKey factory batch');
  const version = r.take(1)[0]!;
  if (version !== FACTORY_BATCH_VERSION)
    throw new FactoryBatchError(`factory batch version ${version} is not supported (this release reads 1)`);
  const flags = r.take(1)[0]!;
  if ((flags & ~FLAG_LOGIN_KEY) !== 0 || r.take(2).readUInt16BE(0) !== 0)
    throw new FactoryBatchError('unknown flags or reserved bits set');
  const deviceId = r.str();
  const batchId = r.str();
  const firstIndex = r.u32();
  const up = r.u32();
  const down = r.u32();
  if (up + down > MAX_BATCH_KEYS) throw new FactoryBatchError(`more than ${MAX_BATCH_KEYS} keys`);
  if (firstIndex + up + down > 2 ** 32) throw new FactoryBatchError('key indices beyond 2^32-1');
  const recipient = r.take(SM2_PUBLIC_KEY_LENGTH).toString('hex');
  const issuer = r.take(SM2_PUBLIC_KEY_LENGTH).toString('hex');
  return { deviceId, batchId, firstIndex, up, down, loginKey: (flags & FLAG_LOGIN_KEY) !== 0, recipient, issuer };
}

/**
 * Opens a batch for the chip holding `transport`: checks the layout, that it is addressed to this key, the issuer's
 * signature over everything (before any decryption), then unwraps the content key and opens the keys.
 */
export function openFactoryBatch(bytes: Uint8Array, transport: Sm2KeyPair): OpenedFactoryBatch {
  const b = Buffer.from(bytes);
  const info = inspectFactoryBatch(b);
  if (info.recipient !== transport.publicKey)
    throw new FactoryBatchError('batch is sealed for another chip (transport key differs)');
  const r = new Reader(b);
  r.take(8);
  r.str();
  r.str();
  r.take(12 + 2 * SM2_PUBLIC_KEY_LENGTH);
  const headerEnd = r.at;
  const wrappedLength = r.u16();
  if (wrappedLength !== WRAPPED_CEK) throw new FactoryBatchError('wrapped content key has the wrong length');
  const wrapped = r.take(wrappedLength);
  const n = (info.loginKey ? 1 : 0) + info.up + info.down;
  const ciphertext = r.take(KEY * n);
  const tag = r.take(TAG);
  const signedEnd = r.at;
  const signature = r.take(SM2_SIGNATURE_LENGTH);
  if (r.at !== b.length) throw new FactoryBatchError('trailing bytes after the signature');
  // Authenticate before decrypting: the issuer's signature covers header, wrapped key, ciphertext and tag.
  if (!sm2Verify(b.subarray(0, signedEnd), signature, info.issuer))
    throw new FactoryBatchError('issuer signature does not verify');
  const cek = sm2Decrypt(wrapped, transport.privateKey);
  if (!cek) throw new FactoryBatchError('content key does not unwrap with this chip transport key');
  const gcm = new GcmKey(getBackend().createBlockCipher(cek));
  cek.fill(0);
  const plain = gcm.open(NONCE, b.subarray(0, headerEnd), ciphertext, tag);
  gcm.destroy();
  if (!plain) throw new FactoryBatchError('key material fails authentication');
  const keyAt = (i: number) => Uint8Array.from(plain.subarray(KEY * i, KEY * (i + 1)));
  const skip = info.loginKey ? 1 : 0;
  const out: OpenedFactoryBatch = {
    deviceId: info.deviceId,
    batchId: info.batchId,
    firstIndex: info.firstIndex,
    up: Array.from({ length: info.up }, (_, i) => keyAt(skip + i)),
    down: Array.from({ length: info.down }, (_, i) => keyAt(skip + info.up + i)),
    ...(info.loginKey ? { loginKey: keyAt(0) } : {}),
    issuer: info.issuer,
  };
  plain.fill(0);
  return out;
}
