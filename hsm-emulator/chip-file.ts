// The security chip's sealed file: layout, whole-file integrity MAC, PIN key derivation, SM4-GCM body, atomic writes.
import { createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { GcmKey, getBackend } from '../protocol/index.js';
import { ChipError } from './chip-errors.js';

const MAGIC = Buffer.from('QKCHIP01');
/** The file format this build reads and writes. Format 1 (attempt counter outside any MAC) is refused. */
export const CHIP_FILE_FORMAT = 2;
/**
 * magic (8) | format (1) | ~format (1) | failed PIN attempts (1) | KDF salt (16) | KDF iterations (4) |
 * file salt (16) | body (n) | tag (16) | MAC (32).
 * - tag: SM4-GCM under the PIN-derived file key; AAD = every byte before the body except the attempts byte.
 * - MAC: HMAC-SM3 over every byte before it, under an integrity key derived from the KDF salt (not from the PIN),
 *   so damage anywhere, the attempts byte included, is found before the PIN is tried.
 */
const OFF = { format: 8, formatCheck: 9, attempts: 10, kdfSalt: 11, iterations: 27, fileSalt: 31 } as const;
const HEADER = 47;
const TAG = 16;
const MAC = 32;
const MIN_LENGTH = HEADER + TAG + MAC;
export const MAX_PIN_ATTEMPTS = 5;
export const DEFAULT_KDF_ITERATIONS = 200_000;
export const MIN_KDF_ITERATIONS = 1000;
const MAX_KDF_ITERATIONS = 10_000_000;

export interface SealedFile {
  /** The file's bytes exactly as read (already checked against the MAC). */
  bytes: Buffer;
  attempts: number;
  kdfSalt: Buffer;
  iterations: number;
  fileSalt: Buffer;
  body: Buffer;
  tag: Buffer;
}

export interface SealingMaterial {
  kdfSalt: Buffer;
  iterations: number;
  pinKey: Buffer;
}

/** PIN key: PBKDF2-HMAC-SM3, deliberately slow (about 0.26 s at the default count on a 2-core test machine). */
export function derivePinKey(pin: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(pin, salt, iterations, 32, 'sm3');
}

/**
 * The integrity key needs no PIN, so the file is checked before any PIN attempt is counted. Anyone holding the file
 * can derive it too: it stops damage and blind edits, not a deliberate forger (docs/ARCHITECTURE.md, "limits").
 */
function integrityKeyFor(kdfSalt: Buffer): Buffer {
  return createHmac('sm3', kdfSalt).update('qkey-mqtt/chip-integrity/v2').digest();
}

function macOf(kdfSalt: Buffer, bytes: Buffer): Buffer {
  const key = integrityKeyFor(kdfSalt);
  try {
    return createHmac('sm3', key).update(bytes).digest();
  } finally {
    key.fill(0);
  }
}

/** A fresh random file salt per write gives a fresh file key per write, so the GCM nonce can stay fixed. */
function fileKeyFor(pinKey: Buffer, fileSalt: Buffer): GcmKey {
  const k = createHmac('sm3', pinKey).update('qkey-mqtt/chip-file/v2').update(fileSalt).digest().subarray(0, 16);
  const key = new GcmKey(getBackend().createBlockCipher(k));
  k.fill(0);
  return key;
}

const NONCE = new Uint8Array(12);

/** The GCM AAD: every header byte except the attempts byte, which changes on wrong PINs without the PIN key. */
function aadOf(header: Buffer): Buffer {
  return Buffer.concat([header.subarray(0, OFF.attempts), header.subarray(OFF.attempts + 1, HEADER)]);
}

const tampered = (why: string) =>
  new ChipError('CHIP_ERR_TAMPERED', `chip file failed authentication (${why}): it was modified or damaged`);

/** A file is taken for a (possibly damaged) chip file when at least 6 of its first 8 bytes match the magic. */
function looksLikeChipFile(bytes: Buffer): boolean {
  if (bytes.length < MAGIC.length) return MAGIC.subarray(0, bytes.length).equals(bytes);
  let same = 0;
  for (let i = 0; i < MAGIC.length; i++) if (bytes[i] === MAGIC[i]) same++;
  return same >= 6;
}

/** Checks the format and the whole-file MAC before anything in the file is believed. */
export function parseSealedFile(bytes: Buffer): SealedFile {
  if (!looksLikeChipFile(bytes)) throw new ChipError('CHIP_ERR_FOREIGN', 'not a QKey chip file');
  if (bytes.length > OFF.formatCheck && bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    const format = bytes[OFF.format]!;
    if (format === 1) {
      throw new ChipError(
        'CHIP_ERR_FORMAT',
        'chip file format 1 is not supported (its attempt counter was not authenticated): personalise a new chip with qkey chip init and fill it',
      );
    }
    if (format !== CHIP_FILE_FORMAT && (format ^ bytes[OFF.formatCheck]!) === 0xff) {
      throw new ChipError(
        'CHIP_ERR_FORMAT',
        `chip file format ${format} is not supported by this release (it reads format ${CHIP_FILE_FORMAT})`,
      );
    }
  }
  if (bytes.length < MIN_LENGTH) throw tampered('truncated');
  const kdfSalt = bytes.subarray(OFF.kdfSalt, OFF.kdfSalt + 16);
  const macAt = bytes.length - MAC;
  if (!timingSafeEqual(macOf(kdfSalt, bytes.subarray(0, macAt)), bytes.subarray(macAt))) throw tampered('MAC');
  if (bytes[OFF.format] !== CHIP_FILE_FORMAT || bytes[OFF.formatCheck] !== (~CHIP_FILE_FORMAT & 0xff))
    throw tampered('format');
  const iterations = bytes.readUInt32BE(OFF.iterations);
  if (iterations < MIN_KDF_ITERATIONS || iterations > MAX_KDF_ITERATIONS)
    throw new ChipError('CHIP_ERR_CORRUPT', 'implausible KDF parameters');
  return {
    bytes,
    attempts: bytes[OFF.attempts]!,
    kdfSalt,
    iterations,
    fileSalt: bytes.subarray(OFF.fileSalt, OFF.fileSalt + 16),
    body: bytes.subarray(HEADER, macAt - TAG),
    tag: bytes.subarray(macAt - TAG, macAt),
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

/**
 * Decrypts the body with the key derived from `pin`. The file's MAC has already been checked, so a failing tag here
 * means a wrong PIN, not damage. Returns undefined for a wrong PIN.
 */
export function openBody(f: SealedFile, pin: string): { pinKey: Buffer; body: Buffer } | undefined {
  const pinKey = derivePinKey(pin, Buffer.from(f.kdfSalt), f.iterations);
  const key = fileKeyFor(pinKey, Buffer.from(f.fileSalt));
  const body = key.open(NONCE, aadOf(f.bytes), f.body, f.tag);
  key.destroy();
  if (!body) {
    pinKey.fill(0);
    return undefined;
  }
  return { pinKey, body: Buffer.from(body) };
}

export function newSealingMaterial(pin: string, iterations: number): SealingMaterial {
  const kdfSalt = randomBytes(16);
  return { kdfSalt, iterations, pinKey: derivePinKey(pin, kdfSalt, iterations) };
}

/** Seals `body` (failed attempts 0) and replaces the file atomically. */
export function writeSealedFile(path: string, p: SealingMaterial, body: Buffer): void {
  const header = Buffer.alloc(HEADER);
  MAGIC.copy(header, 0);
  header[OFF.format] = CHIP_FILE_FORMAT;
  header[OFF.formatCheck] = ~CHIP_FILE_FORMAT & 0xff;
  header[OFF.attempts] = 0;
  p.kdfSalt.copy(header, OFF.kdfSalt);
  header.writeUInt32BE(p.iterations, OFF.iterations);
  randomBytes(16).copy(header, OFF.fileSalt);
  const key = fileKeyFor(p.pinKey, header.subarray(OFF.fileSalt, OFF.fileSalt + 16));
  const { ciphertext, tag } = key.seal(NONCE, aadOf(header), body);
  key.destroy();
  const sealed = Buffer.concat([header, ciphertext, tag]);
  writeAtomically(path, Buffer.concat([sealed, macOf(p.kdfSalt, sealed)]));
}

/**
 * Rewrites the failed-attempts byte of a file already checked by parseSealedFile, with a new MAC. Needs no PIN key:
 * the attempt is recorded before the PIN is checked.
 */
export function writeAttempts(path: string, f: SealedFile, attempts: number): void {
  const bytes = Buffer.from(f.bytes);
  bytes[OFF.attempts] = attempts;
  const macAt = bytes.length - MAC;
  macOf(f.kdfSalt, bytes.subarray(0, macAt)).copy(bytes, macAt);
  writeAtomically(path, bytes);
}

/** Temp file, fsync, rename, fsync of the folder: a crash leaves the old file or the new one, never a mix. */
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
