// The security chip's sealed file: layout, PIN key derivation, SM4-GCM sealing, and atomic replacement on disk.
import { createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { GcmKey, getBackend } from '../protocol/index.js';
import { ChipError } from './chip-errors.js';

const MAGIC = Buffer.from('QKCHIP01');
const FORMAT = 1;
/**
 * magic (8) | format (1) | failed PIN attempts (1) | KDF salt (16) | KDF iterations (4) | PIN check (16) |
 * file salt (16) | body length (4) | body (n) | tag (16). Everything but the attempts byte is authenticated.
 */
const HEADER = 8 + 1 + 1 + 16 + 4 + 16 + 16 + 4;
const TAG = 16;
export const MAX_PIN_ATTEMPTS = 5;
export const DEFAULT_KDF_ITERATIONS = 200_000;

export interface SealedFile {
  attempts: number;
  kdfSalt: Buffer;
  iterations: number;
  pinCheck: Buffer;
  fileSalt: Buffer;
  body: Buffer;
  tag: Buffer;
}

/** PIN key: PBKDF2-HMAC-SM3, deliberately slow (about 0.26 s at the default count on a 2-core test machine). */
export function derivePinKey(pin: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(pin, salt, iterations, 32, 'sm3');
}

function pinCheckFor(pinKey: Buffer): Buffer {
  return createHmac('sm3', pinKey).update('qkey-mqtt/chip-pin-check/v1').digest().subarray(0, 16);
}

/** A fresh random file salt per write gives a fresh file key per write, so the GCM nonce can stay fixed. */
function fileKeyFor(pinKey: Buffer, fileSalt: Buffer): GcmKey {
  const k = createHmac('sm3', pinKey).update('qkey-mqtt/chip-file/v1').update(fileSalt).digest().subarray(0, 16);
  const key = new GcmKey(getBackend().createBlockCipher(k));
  k.fill(0);
  return key;
}

const NONCE = new Uint8Array(12);

function headerBytes(f: Omit<SealedFile, 'body' | 'tag'>, bodyLength: number): Buffer {
  const h = Buffer.alloc(HEADER);
  MAGIC.copy(h, 0);
  h[8] = FORMAT;
  h[9] = f.attempts;
  f.kdfSalt.copy(h, 10);
  h.writeUInt32BE(f.iterations, 26);
  f.pinCheck.copy(h, 30);
  f.fileSalt.copy(h, 46);
  h.writeUInt32BE(bodyLength, 62);
  return h;
}

/** The AAD is the header without the attempts byte, which changes on wrong PINs without the key. */
function aadOf(header: Buffer): Buffer {
  return Buffer.concat([header.subarray(0, 9), header.subarray(10)]);
}

export function parseSealedFile(bytes: Buffer): SealedFile {
  if (bytes.length < MAGIC.length || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new ChipError('CHIP_ERR_FOREIGN', 'not a QKey chip file');
  }
  if (bytes.length < HEADER + TAG) throw new ChipError('CHIP_ERR_CORRUPT', 'file is truncated');
  if (bytes[8] !== FORMAT) throw new ChipError('CHIP_ERR_CORRUPT', `unsupported chip file format ${bytes[8]}`);
  const length = bytes.readUInt32BE(62);
  if (bytes.length !== HEADER + length + TAG)
    throw new ChipError('CHIP_ERR_CORRUPT', 'file is truncated or has trailing bytes');
  const iterations = bytes.readUInt32BE(26);
  if (iterations < 1000 || iterations > 10_000_000)
    throw new ChipError('CHIP_ERR_CORRUPT', 'implausible KDF parameters');
  return {
    attempts: bytes[9] as number,
    kdfSalt: bytes.subarray(10, 26),
    iterations,
    pinCheck: bytes.subarray(30, 46),
    fileSalt: bytes.subarray(46, 62),
    body: bytes.subarray(HEADER, HEADER + length),
    tag: bytes.subarray(HEADER + length),
  };
}

export function readSealedFile(path: string): SealedFile {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new ChipError('CHIP_ERR_NOT_FOUND', `no chip file at ${path}`);
    throw err;
  }
  return parseSealedFile(bytes);
}

/** Checks the PIN against the stored check value; on success returns the PIN key. */
export function unlock(f: SealedFile, pin: string): Buffer | undefined {
  const pinKey = derivePinKey(pin, Buffer.from(f.kdfSalt), f.iterations);
  if (timingSafeEqual(pinCheckFor(pinKey), f.pinCheck)) return pinKey;
  pinKey.fill(0);
  return undefined;
}

export function decryptBody(f: SealedFile, pinKey: Buffer): Buffer {
  const key = fileKeyFor(pinKey, Buffer.from(f.fileSalt));
  const header = headerBytes(f, f.body.length);
  const body = key.open(NONCE, aadOf(header), f.body, f.tag);
  key.destroy();
  if (!body) throw new ChipError('CHIP_ERR_TAMPERED', 'chip file failed authentication: it was modified or damaged');
  return Buffer.from(body);
}

export function newPinMaterial(pin: string, iterations: number): { kdfSalt: Buffer; pinKey: Buffer; pinCheck: Buffer } {
  const kdfSalt = randomBytes(16);
  const pinKey = derivePinKey(pin, kdfSalt, iterations);
  return { kdfSalt, pinKey, pinCheck: pinCheckFor(pinKey) };
}

/** Seals `body` and replaces the file atomically: temp file, fsync, rename, fsync of the folder. */
export function writeSealedFile(
  path: string,
  p: { kdfSalt: Buffer; iterations: number; pinCheck: Buffer; pinKey: Buffer; attempts?: number },
  body: Buffer,
): void {
  const fileSalt = randomBytes(16);
  const head = {
    attempts: p.attempts ?? 0,
    kdfSalt: p.kdfSalt,
    iterations: p.iterations,
    pinCheck: p.pinCheck,
    fileSalt,
  };
  const header = headerBytes(head, body.length);
  const key = fileKeyFor(p.pinKey, fileSalt);
  const { ciphertext, tag } = key.seal(NONCE, aadOf(header), body);
  key.destroy();
  writeAtomically(path, Buffer.concat([header, ciphertext, tag]));
}

/** Rewrites only the failed-attempts byte (a wrong PIN has no key to reseal with). */
export function writeAttempts(path: string, attempts: number): void {
  const bytes = readFileSync(path);
  bytes[9] = attempts;
  writeAtomically(path, bytes);
}

export function writeAtomically(path: string, bytes: Buffer): void {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, bytes);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, path);
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}
